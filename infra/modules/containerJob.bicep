// A Container Apps Job from the shared image: the database migration (manual, run by CI before a
// rollout) and the dead-letter pass (on a schedule).

param name string
param location string
param tags object
param environmentId string
param image string
param registryServer string
param identityId string
param command array
param env array
param secretNames array
param vaultUri string
param cpu string
param memory string

@description('Cron expression (UTC); empty: started by hand or by CI (az containerapp job start).')
param cronExpression string = ''

@description('Seconds one execution may take.')
param timeoutSeconds int = 600

var manualTrigger = {
  parallelism: 1
  replicaCompletionCount: 1
}

var scheduleTrigger = {
  cronExpression: cronExpression
  parallelism: 1
  replicaCompletionCount: 1
}

resource job 'Microsoft.App/jobs@2024-03-01' = {
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
      triggerType: empty(cronExpression) ? 'Manual' : 'Schedule'
      manualTriggerConfig: empty(cronExpression) ? manualTrigger : null
      scheduleTriggerConfig: empty(cronExpression) ? null : scheduleTrigger
      replicaTimeout: timeoutSeconds
      replicaRetryLimit: 1
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
        }
      ]
    }
  }
}

output name string = job.name
