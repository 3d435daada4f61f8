// The device-event queue: sessions (one session per device keeps its events in order), a bounded
// delivery count then the dead-letter queue, duplicate detection on MessageId, and no SAS keys:
// every client signs in with its managed identity (listeners/settings.py, ORCH_SB_*).

param location string
param prefix string
param tags object

@allowed([
  'Standard'
  'Premium'
])
@description('Sessions and duplicate detection need Standard or Premium.')
param sku string

param queueName string

@description('Log Analytics workspace that receives the diagnostic logs.')
param workspaceId string

@description('Deliveries before a message goes to the dead-letter queue.')
@minValue(1)
param maxDeliveryCount int

@description('Peek-lock duration (ISO 8601, at most PT5M); the listener renews it while it works.')
param lockDuration string

@description('Window in which a repeated MessageId is dropped (ISO 8601).')
param duplicateDetectionWindow string

@description('Principal ids that receive, complete and dead-letter (the listener, the dead-letter job).')
param receiverPrincipalIds array

@description('Principal ids that send (the listener resubmits, the dead-letter job resubmits).')
param senderPrincipalIds array

var receiverRole = '4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0' // Azure Service Bus Data Receiver
var senderRole = '69a216fc-b8fb-44d8-bc22-1f3c2cd27a39' // Azure Service Bus Data Sender

resource namespace 'Microsoft.ServiceBus/namespaces@2022-10-01-preview' = {
  name: 'sb-${prefix}-${uniqueString(resourceGroup().id)}'
  location: location
  tags: tags
  sku: {
    name: sku
    tier: sku
  }
  properties: {
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
    publicNetworkAccess: 'Enabled'
  }
}

resource queue 'Microsoft.ServiceBus/namespaces/queues@2022-10-01-preview' = {
  parent: namespace
  name: queueName
  properties: {
    requiresSession: true
    maxDeliveryCount: maxDeliveryCount
    lockDuration: lockDuration
    deadLetteringOnMessageExpiration: true
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: duplicateDetectionWindow
    defaultMessageTimeToLive: 'P14D'
    maxSizeInMegabytes: 1024
    enablePartitioning: false
  }
}

// Scoped to the queue, not the namespace: the identities can touch this queue only.
resource receivers 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for principalId in receiverPrincipalIds: {
    name: guid(queue.id, principalId, receiverRole)
    scope: queue
    properties: {
      principalId: principalId
      principalType: 'ServicePrincipal'
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', receiverRole)
    }
  }
]

resource senders 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for principalId in senderPrincipalIds: {
    name: guid(queue.id, principalId, senderRole)
    scope: queue
    properties: {
      principalId: principalId
      principalType: 'ServicePrincipal'
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', senderRole)
    }
  }
]

// Its logs and metrics go to the Log Analytics workspace (docs/AZURE.md, "Monitoring").
resource diagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: namespace
  properties: {
    workspaceId: workspaceId
    logs: [
      {
        categoryGroup: 'allLogs'
        enabled: true
      }
    ]
    metrics: [
      {
        category: 'AllMetrics'
        enabled: true
      }
    ]
  }
}

output namespaceName string = namespace.name
output fullyQualifiedNamespace string = '${namespace.name}.servicebus.windows.net'
output queueName string = queue.name
