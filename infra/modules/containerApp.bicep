// One long-running process of the system as a Container App: the shared image, a command, a
// user-assigned identity, environment values and Key Vault secret references.

param name string
param location string
param tags object
param environmentId string
param image string
param registryServer string

@description('Resource id of the user-assigned identity (registry pull, Key Vault, Azure SDKs).')
param identityId string

param command array
param env array

@description('Key Vault secrets the process references by name (secretRef in env).')
param secretNames array
param vaultUri string

param cpu string
param memory string

@minValue(0)
param minReplicas int

@minValue(1)
param maxReplicas int

@description('Port of the HTTP ingress; 0 for none.')
param targetPort int = 0

@description('Whether the ingress is reachable from the internet (else the environment only).')
param external bool = false

@description('Addresses allowed through the ingress, e.g. [{name, ipAddressRange, action: Allow}].')
param ipSecurityRestrictions array = []

@description('Path of the HTTP health endpoint; empty for none.')
param healthPath string = ''

@description('KEDA scale rules (Container Apps format); empty: scaled by replicas alone.')
param scaleRules array = []

var healthProbes = [
  {
    type: 'Liveness'
    httpGet: {
      path: healthPath
      port: targetPort
    }
    periodSeconds: 30
    failureThreshold: 3
  }
  {
    type: 'Readiness'
    httpGet: {
      path: healthPath
      port: targetPort
    }
    periodSeconds: 10
    failureThreshold: 3
  }
]

var ingress = {
  external: external
  targetPort: targetPort
  transport: 'http'
  allowInsecure: false
  ipSecurityRestrictions: ipSecurityRestrictions
}

resource app 'Microsoft.App/containerApps@2025-01-01' = {
  name: name
  location: location
  tags: tags
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    environmentId: environmentId
    workloadProfileName: 'Consumption'
    configuration: {
      activeRevisionsMode: 'Single'
      ingress: targetPort == 0 ? null : ingress
      registries: [
        {
          server: registryServer
          identity: identityId
        }
      ]
      secrets: [
        for secret in secretNames: {
          name: secret
          keyVaultUrl: '${vaultUri}secrets/${secret}'
          identity: identityId
        }
      ]
    }
    template: {
      containers: [
        {
          name: name
          image: image
          command: command
          env: env
          resources: {
            cpu: json(cpu)
            memory: memory
          }
          probes: empty(healthPath) ? [] : healthProbes
        }
      ]
      scale: {
        minReplicas: minReplicas
        maxReplicas: maxReplicas
        rules: scaleRules
      }
    }
  }
}

output fqdn string = targetPort == 0 ? '' : app.properties.configuration.ingress.fqdn
output name string = app.name
