// The Container Apps environment (in the apps subnet, logs to Log Analytics) and the registry the
// image is pushed to. Pulls use managed identities (AcrPull), never the admin user.

param location string
param prefix string
param tags object
param appsSubnetId string
param workspaceName string

@allowed([
  'Basic'
  'Standard'
  'Premium'
])
param registrySku string

@description('Principal ids that pull the image (every app, the run containers).')
param pullPrincipalIds array

var acrPullRole = '7f951dda-4ed3-4680-a7ca-43fe172d538d' // AcrPull

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' existing = {
  name: workspaceName
}

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' = {
  // checkov:skip=CKV_AZURE_166:Quarantine needs the Premium tier; images come only from the CI pipeline that built and tested them (docs/AZURE.md).
  // checkov:skip=CKV_AZURE_139:Basic and Standard registries have no network rules (Premium with private endpoints does); pulls are authenticated by managed identity, anonymous pull and the admin user are off.
  // checkov:skip=CKV_AZURE_163:Image scanning is Microsoft Defender for Containers, enabled per subscription, not a registry property; docs/AZURE.md says to enable it.
  name: take('cr${replace(prefix, '-', '')}${uniqueString(resourceGroup().id)}', 50)
  location: location
  tags: tags
  sku: {
    name: registrySku
  }
  properties: {
    adminUserEnabled: false
    anonymousPullEnabled: false
  }
}

resource pullers 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for principalId in pullPrincipalIds: {
    name: guid(registry.id, principalId, acrPullRole)
    scope: registry
    properties: {
      principalId: principalId
      principalType: 'ServicePrincipal'
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', acrPullRole)
    }
  }
]

resource environment 'Microsoft.App/managedEnvironments@2024-03-01' = {
  name: 'cae-${prefix}'
  location: location
  tags: tags
  properties: {
    appLogsConfiguration: {
      destination: 'log-analytics'
      logAnalyticsConfiguration: {
        customerId: workspace.properties.customerId
        sharedKey: workspace.listKeys().primarySharedKey
      }
    }
    vnetConfiguration: {
      infrastructureSubnetId: appsSubnetId
      internal: false
    }
    workloadProfiles: [
      {
        name: 'Consumption'
        workloadProfileType: 'Consumption'
      }
    ]
  }
}

output environmentId string = environment.id
output defaultDomain string = environment.properties.defaultDomain
output registryServer string = registry.properties.loginServer
output registryName string = registry.name
