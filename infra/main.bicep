// The whole system on Azure in one resource group (docs/AZURE.md):
//   az deployment group create -g <group> -f infra/main.bicep -p infra/env/<environment>.bicepparam
// Service Bus (sessions), PostgreSQL Flexible Server (Prefect's and our database), Blob storage
// (definitions, results), Key Vault (every secret), Log Analytics + Application Insights, a
// registry, and Container Apps for each long-running process, each with its own user-assigned
// identity holding only the roles it needs. No connection string or key is handed to a process:
// the Azure SDKs sign in with DefaultAzureCredential (AZURE_CLIENT_ID names the identity) and the
// secrets are Key Vault references.
//
// The env arrays below are checked against the settings the code reads
// (tests/unit/test_infra_settings.py): a name the code does not read, or a required one missing,
// fails CI.

targetScope = 'resourceGroup'

@allowed([
  'dev'
  'test'
  'prod'
])
param environmentName string

param location string = resourceGroup().location

@description('Name prefix of every resource.')
param prefix string = 'orch-${environmentName}'

@description('false on the first deployment (the registry exists, the image is not pushed yet).')
param deployApps bool = true

@description('The image every process runs, e.g. <registry>.azurecr.io/orchestration:<git sha>.')
param image string = ''

@description('Public addresses (CI, operators) admitted by the Storage and Key Vault firewalls.')
param allowedIpAddresses array = []

// --- Service Bus ---------------------------------------------------------------------------
@allowed([
  'Standard'
  'Premium'
])
param serviceBusSku string = 'Standard'
param queueName string = 'device-events'
param maxDeliveryCount int = 10
param lockDuration string = 'PT1M'
param duplicateDetectionWindow string = 'PT10M'

@description('Sessions (devices) one listener replica handles at once (ORCH_SB_MAX_CONCURRENT_SESSIONS).')
param maxConcurrentSessions int = 8

// --- PostgreSQL ----------------------------------------------------------------------------
param postgresSkuName string = 'Standard_B1ms'

@allowed([
  'Burstable'
  'GeneralPurpose'
  'MemoryOptimized'
])
param postgresSkuTier string = 'Burstable'
param postgresStorageGB int = 32
param postgresBackupRetentionDays int = 7
param postgresGeoRedundantBackup bool = false
param postgresHighAvailability bool = false
param postgresAdminLogin string = 'orchestration'

@secure()
param postgresAdminPassword string

// --- Storage, registry, monitoring ---------------------------------------------------------
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
])
param storageSku string = 'Standard_LRS'
param definitionsContainer string = 'definitions'
param resultsContainer string = 'orchestration-results'

@allowed([
  'Basic'
  'Standard'
  'Premium'
])
param registrySku string = 'Basic'
param logRetentionDays int = 30

// --- Secrets (Key Vault) -------------------------------------------------------------------
@secure()
@description('JSON list of API keys, e.g. ["k1","k2"] (ORCH_API_API_KEYS).')
param apiKeys string

@secure()
@description('Webhook for alerts and notify.send (ORCH_NOTIFY_WEBHOOK_URL, ORCH_SB_ALERT_WEBHOOK_URL).')
param webhookUrl string

@secure()
@description('user:password the Prefect server demands (PREFECT_SERVER_API_AUTH_STRING).')
param prefectAuthString string

// --- Processes -----------------------------------------------------------------------------
@description('Workflow a device event starts (ORCH_INGRESS_WORKFLOW).')
param ingressWorkflow string = 'device-onboarding'

@description('Hosts http.request may call (ORCH_HTTP_ALLOWED_HOSTS).')
param httpAllowedHosts array = []

param executorReplicas int = 1

@description('Runs one executor replica executes at once (orchestration worker --concurrency).')
param executorConcurrency int = 50
param listenerMinReplicas int = 1
param listenerMaxReplicas int = 4

@description('Queued messages per listener replica before KEDA adds one.')
param listenerMessagesPerReplica int = 100
param apiMinReplicas int = 1
param apiMaxReplicas int = 3

@description('Addresses admitted to the Prefect server UI/API besides the auth string; [] admits any.')
param prefectIpSecurityRestrictions array = []

var tags = {
  system: 'device-orchestration'
  environment: environmentName
}

// Names shared with prefect.yaml (its Azure deployments): the pool the Prefect worker serves and
// the deployment that ingress, the API and the executor use.
var workPool = 'orchestration-aci'
var workflowDeployment = 'device-workflow-azure'
var prefectDatabase = 'prefect'
var orchestrationDatabase = 'orchestration'

// --- Identities: one per process, each granted only what that process does ----------------
resource executorIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-${prefix}-executor'
  location: location
  tags: tags
}

resource listenerIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-${prefix}-listener'
  location: location
  tags: tags
}

resource apiIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-${prefix}-api'
  location: location
  tags: tags
}

resource prefectServerIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-${prefix}-prefect-server'
  location: location
  tags: tags
}

resource prefectWorkerIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-${prefix}-prefect-worker'
  location: location
  tags: tags
}

resource jobsIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-${prefix}-jobs'
  location: location
  tags: tags
}

// --- Platform ------------------------------------------------------------------------------
module network 'modules/network.bicep' = {
  name: 'network'
  params: {
    location: location
    prefix: prefix
    tags: tags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    location: location
    prefix: prefix
    tags: tags
    retentionDays: logRetentionDays
  }
}

module serviceBus 'modules/servicebus.bicep' = {
  name: 'servicebus'
  params: {
    workspaceId: monitoring.outputs.workspaceId
    location: location
    prefix: prefix
    tags: tags
    sku: serviceBusSku
    queueName: queueName
    maxDeliveryCount: maxDeliveryCount
    lockDuration: lockDuration
    duplicateDetectionWindow: duplicateDetectionWindow
    receiverPrincipalIds: [
      listenerIdentity.properties.principalId
      jobsIdentity.properties.principalId
    ]
    senderPrincipalIds: [
      listenerIdentity.properties.principalId
      jobsIdentity.properties.principalId
    ]
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    location: location
    prefix: prefix
    tags: tags
    skuName: storageSku
    definitionsContainer: definitionsContainer
    resultsContainer: resultsContainer
    subnetIds: [
      network.outputs.appsSubnetId
      network.outputs.aciSubnetId
    ]
    allowedIpAddresses: allowedIpAddresses
    definitionReaderPrincipalIds: [
      executorIdentity.properties.principalId
      listenerIdentity.properties.principalId
      apiIdentity.properties.principalId
    ]
    resultWriterPrincipalIds: [
      executorIdentity.properties.principalId
    ]
  }
}

module postgres 'modules/postgres.bicep' = {
  name: 'postgres'
  params: {
    workspaceId: monitoring.outputs.workspaceId
    location: location
    prefix: prefix
    tags: tags
    skuName: postgresSkuName
    skuTier: postgresSkuTier
    storageSizeGB: postgresStorageGB
    backupRetentionDays: postgresBackupRetentionDays
    geoRedundantBackup: postgresGeoRedundantBackup
    highAvailability: postgresHighAvailability
    administratorLogin: postgresAdminLogin
    administratorPassword: postgresAdminPassword
    delegatedSubnetId: network.outputs.postgresSubnetId
    vnetId: network.outputs.vnetId
    prefectDatabase: prefectDatabase
    orchestrationDatabase: orchestrationDatabase
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  params: {
    workspaceId: monitoring.outputs.workspaceId
    location: location
    prefix: prefix
    tags: tags
    subnetIds: [
      network.outputs.appsSubnetId
      network.outputs.aciSubnetId
    ]
    allowedIpAddresses: allowedIpAddresses
    postgresHost: postgres.outputs.host
    postgresLogin: postgresAdminLogin
    postgresPassword: postgresAdminPassword
    prefectDatabase: prefectDatabase
    orchestrationDatabase: orchestrationDatabase
    apiKeys: apiKeys
    webhookUrl: webhookUrl
    prefectAuthString: prefectAuthString
    insightsName: monitoring.outputs.insightsName
  }
}

module appsEnvironment 'modules/environment.bicep' = {
  name: 'environment'
  params: {
    location: location
    prefix: prefix
    tags: tags
    appsSubnetId: network.outputs.appsSubnetId
    workspaceName: monitoring.outputs.workspaceName
    registrySku: registrySku
    pullPrincipalIds: [
      executorIdentity.properties.principalId
      listenerIdentity.properties.principalId
      apiIdentity.properties.principalId
      prefectServerIdentity.properties.principalId
      prefectWorkerIdentity.properties.principalId
      jobsIdentity.properties.principalId
    ]
  }
}

module aciWorkerRole 'modules/aciWorkerRole.bicep' = {
  name: 'aci-worker-role'
  params: {
    workerPrincipalId: prefectWorkerIdentity.properties.principalId
  }
}

// --- Environment of each process -----------------------------------------------------------
var prefectServerName = 'ca-${prefix}-prefect'
var prefectApiUrl = 'https://${prefectServerName}.${appsEnvironment.outputs.defaultDomain}/api'

var prefectClientEnv = [
  {
    name: 'PREFECT_API_URL'
    value: prefectApiUrl
  }
  {
    name: 'PREFECT_API_AUTH_STRING'
    secretRef: 'prefect-auth-string'
  }
]

var databaseEnv = [
  {
    name: 'ORCH_DB_URL'
    secretRef: 'orch-db-url'
  }
  {
    // Burstable B1ms admits 50 connections: executor, listener, API and Prefect share them.
    name: 'ORCH_DB_POOL_SIZE'
    value: '3'
  }
  {
    name: 'ORCH_DB_MAX_OVERFLOW'
    value: '2'
  }
  {
    // The migrate job upgrades the schema before a rollout; the processes never do.
    name: 'ORCH_DB_MIGRATE_ON_CONNECT'
    value: 'false'
  }
]

var definitionsEnv = [
  {
    name: 'ORCH_DEFINITIONS_AZURE_CONTAINER'
    value: definitionsContainer
  }
  {
    name: 'ORCH_DEFINITIONS_AZURE_ACCOUNT_URL'
    value: storage.outputs.blobEndpoint
  }
]

var telemetryEnv = [
  {
    name: 'ORCH_OTEL_EXPORTER'
    value: 'azure'
  }
  {
    name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
    secretRef: 'appinsights-connection-string'
  }
]

var executorEnv = [
  {
    name: 'AZURE_CLIENT_ID'
    value: executorIdentity.properties.clientId
  }
  {
    name: 'ORCH_HTTP_ALLOWED_HOSTS'
    value: string(httpAllowedHosts)
  }
  {
    name: 'ORCH_NOTIFY_WEBHOOK_URL'
    secretRef: 'webhook-url'
  }
  {
    name: 'PREFECT_RESULTS_PERSIST_BY_DEFAULT'
    value: 'true'
  }
  {
    name: 'PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK'
    value: 'azure-blob-storage-container/${resultsContainer}'
  }
  {
    name: 'PREFECT_FLOWS_HEARTBEAT_FREQUENCY'
    value: '30'
  }
  {
    // The executor's outbox reconciler starts deferred runs: of this deployment, not the local one.
    name: 'ORCH_INGRESS_DEPLOYMENT'
    value: 'run-workflow/${workflowDeployment}'
  }
  {
    name: 'ORCH_INGRESS_WORKFLOW'
    value: ingressWorkflow
  }
]

var listenerEnv = [
  {
    name: 'AZURE_CLIENT_ID'
    value: listenerIdentity.properties.clientId
  }
  {
    name: 'ORCH_SB_FULLY_QUALIFIED_NAMESPACE'
    value: serviceBus.outputs.fullyQualifiedNamespace
  }
  {
    name: 'ORCH_SB_QUEUE_NAME'
    value: queueName
  }
  {
    name: 'ORCH_SB_MAX_CONCURRENT_SESSIONS'
    value: string(maxConcurrentSessions)
  }
  {
    name: 'ORCH_INGRESS_WORKFLOW'
    value: ingressWorkflow
  }
  {
    name: 'ORCH_INGRESS_DEPLOYMENT'
    value: 'run-workflow/${workflowDeployment}'
  }
]

var apiEnv = [
  {
    name: 'AZURE_CLIENT_ID'
    value: apiIdentity.properties.clientId
  }
  {
    name: 'ORCH_API_HOST'
    value: '0.0.0.0'
  }
  {
    name: 'ORCH_API_PORT'
    value: '8080'
  }
  {
    name: 'ORCH_API_API_KEYS'
    secretRef: 'api-keys'
  }
  {
    name: 'ORCH_INGRESS_WORKFLOW'
    value: ingressWorkflow
  }
  {
    name: 'ORCH_INGRESS_DEPLOYMENT'
    value: 'run-workflow/${workflowDeployment}'
  }
]

var prefectServerEnv = [
  {
    name: 'PREFECT_SERVER_API_HOST'
    value: '0.0.0.0'
  }
  {
    name: 'PREFECT_SERVER_API_PORT'
    value: '4200'
  }
  {
    name: 'PREFECT_SERVER_DATABASE_CONNECTION_URL'
    secretRef: 'prefect-db-url'
  }
  {
    name: 'PREFECT_SERVER_DATABASE_SQLALCHEMY_CONNECT_ARGS_TLS_ENABLED'
    value: 'true'
  }
  {
    name: 'PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE'
    value: '5'
  }
  {
    // A fleet started at once waits minutes for executor slots: marking ~all of it Late costs
    // a transition and an event per run (docs/OPERATIONS.md 1.4).
    name: 'PREFECT_SERVER_SERVICES_LATE_RUNS_AFTER_SECONDS'
    value: '300'
  }
  {
    name: 'PREFECT_SERVER_API_AUTH_STRING'
    secretRef: 'prefect-auth-string'
  }
  {
    name: 'PREFECT_UI_API_URL'
    value: prefectApiUrl
  }
]

var prefectWorkerEnv = [
  {
    // The worker creates container groups through ARM with this identity (aciWorkerRole.bicep).
    name: 'AZURE_CLIENT_ID'
    value: prefectWorkerIdentity.properties.clientId
  }
]

var deadLettersEnv = [
  {
    name: 'AZURE_CLIENT_ID'
    value: jobsIdentity.properties.clientId
  }
  {
    name: 'ORCH_SB_FULLY_QUALIFIED_NAMESPACE'
    value: serviceBus.outputs.fullyQualifiedNamespace
  }
  {
    name: 'ORCH_SB_QUEUE_NAME'
    value: queueName
  }
  {
    name: 'ORCH_SB_ALERT_WEBHOOK_URL'
    secretRef: 'webhook-url'
  }
]

var migrateEnv = [
  {
    name: 'ORCH_DB_URL'
    secretRef: 'orch-db-url'
  }
]

// --- Key Vault access: each identity reads the secrets its process references ---------------
module executorSecrets 'modules/secretAccess.bicep' = {
  name: 'secrets-executor'
  params: {
    vaultName: keyVault.outputs.name
    principalId: executorIdentity.properties.principalId
    secretNames: [
      'prefect-auth-string'
      'orch-db-url'
      'appinsights-connection-string'
      'webhook-url'
    ]
  }
}

module listenerSecrets 'modules/secretAccess.bicep' = {
  name: 'secrets-listener'
  params: {
    vaultName: keyVault.outputs.name
    principalId: listenerIdentity.properties.principalId
    secretNames: [
      'prefect-auth-string'
      'orch-db-url'
      'appinsights-connection-string'
    ]
  }
}

module apiSecrets 'modules/secretAccess.bicep' = {
  name: 'secrets-api'
  params: {
    vaultName: keyVault.outputs.name
    principalId: apiIdentity.properties.principalId
    secretNames: [
      'prefect-auth-string'
      'orch-db-url'
      'appinsights-connection-string'
      'api-keys'
    ]
  }
}

module prefectServerSecrets 'modules/secretAccess.bicep' = {
  name: 'secrets-prefect-server'
  params: {
    vaultName: keyVault.outputs.name
    principalId: prefectServerIdentity.properties.principalId
    secretNames: [
      'prefect-db-url'
      'prefect-auth-string'
    ]
  }
}

module prefectWorkerSecrets 'modules/secretAccess.bicep' = {
  name: 'secrets-prefect-worker'
  params: {
    vaultName: keyVault.outputs.name
    principalId: prefectWorkerIdentity.properties.principalId
    secretNames: [
      'prefect-auth-string'
    ]
  }
}

module jobsSecrets 'modules/secretAccess.bicep' = {
  name: 'secrets-jobs'
  params: {
    vaultName: keyVault.outputs.name
    principalId: jobsIdentity.properties.principalId
    secretNames: [
      'orch-db-url'
      'webhook-url'
    ]
  }
}

// --- The processes -------------------------------------------------------------------------
module prefectServerApp 'modules/containerApp.bicep' = if (deployApps) {
  name: 'app-prefect-server'
  params: {
    name: prefectServerName
    location: location
    tags: tags
    environmentId: appsEnvironment.outputs.environmentId
    image: image
    registryServer: appsEnvironment.outputs.registryServer
    identityId: prefectServerIdentity.id
    command: [
      'prefect'
      'server'
      'start'
    ]
    env: prefectServerEnv
    secretNames: prefectServerSecrets.outputs.secretNames
    vaultUri: keyVault.outputs.uri
    cpu: '1.0'
    memory: '2Gi'
    // One replica: the server's background services (scheduler, late runs) assume one.
    minReplicas: 1
    maxReplicas: 1
    targetPort: 4200
    // Reached by the run containers in Azure Container Instances, which are outside the
    // environment; the auth string guards it, the restrictions narrow it where set.
    external: true
    ipSecurityRestrictions: prefectIpSecurityRestrictions
    healthPath: '/api/health'
  }
}

module executorApp 'modules/containerApp.bicep' = if (deployApps) {
  name: 'app-executor'
  params: {
    name: 'ca-${prefix}-executor'
    location: location
    tags: tags
    environmentId: appsEnvironment.outputs.environmentId
    image: image
    registryServer: appsEnvironment.outputs.registryServer
    identityId: executorIdentity.id
    command: [
      'orchestration'
      'worker'
      '--deployment'
      workflowDeployment
      '--concurrency'
      string(executorConcurrency)
    ]
    env: concat(prefectClientEnv, databaseEnv, definitionsEnv, telemetryEnv, executorEnv)
    secretNames: executorSecrets.outputs.secretNames
    vaultUri: keyVault.outputs.uri
    cpu: '1.0'
    memory: '2Gi'
    minReplicas: executorReplicas
    maxReplicas: executorReplicas
  }
}

module listenerApp 'modules/containerApp.bicep' = if (deployApps) {
  name: 'app-listener'
  params: {
    name: 'ca-${prefix}-listener'
    location: location
    tags: tags
    environmentId: appsEnvironment.outputs.environmentId
    image: image
    registryServer: appsEnvironment.outputs.registryServer
    identityId: listenerIdentity.id
    command: [
      'orchestration'
      'listen'
    ]
    env: concat(prefectClientEnv, databaseEnv, definitionsEnv, telemetryEnv, listenerEnv)
    secretNames: listenerSecrets.outputs.secretNames
    vaultUri: keyVault.outputs.uri
    cpu: '0.5'
    memory: '1Gi'
    minReplicas: listenerMinReplicas
    maxReplicas: listenerMaxReplicas
    scaleRules: [
      {
        name: 'queue-length'
        custom: {
          type: 'azure-servicebus'
          metadata: {
            namespace: serviceBus.outputs.namespaceName
            queueName: queueName
            messageCount: string(listenerMessagesPerReplica)
          }
          identity: listenerIdentity.id
        }
      }
    ]
  }
}

module apiApp 'modules/containerApp.bicep' = if (deployApps) {
  name: 'app-api'
  params: {
    name: 'ca-${prefix}-api'
    location: location
    tags: tags
    environmentId: appsEnvironment.outputs.environmentId
    image: image
    registryServer: appsEnvironment.outputs.registryServer
    identityId: apiIdentity.id
    command: [
      'orchestration'
      'serve-api'
    ]
    env: concat(prefectClientEnv, databaseEnv, definitionsEnv, telemetryEnv, apiEnv)
    secretNames: apiSecrets.outputs.secretNames
    vaultUri: keyVault.outputs.uri
    cpu: '0.5'
    memory: '1Gi'
    minReplicas: apiMinReplicas
    maxReplicas: apiMaxReplicas
    targetPort: 8080
    external: true
    healthPath: '/health'
    scaleRules: [
      {
        name: 'http'
        http: {
          metadata: {
            concurrentRequests: '50'
          }
        }
      }
    ]
  }
}

module prefectWorkerApp 'modules/containerApp.bicep' = if (deployApps) {
  name: 'app-prefect-worker'
  params: {
    name: 'ca-${prefix}-prefect-worker'
    location: location
    tags: tags
    environmentId: appsEnvironment.outputs.environmentId
    image: image
    registryServer: appsEnvironment.outputs.registryServer
    identityId: prefectWorkerIdentity.id
    command: [
      'prefect'
      'worker'
      'start'
      '--pool'
      workPool
      '--work-queue'
      'default'
      '--type'
      'azure-container-instance'
    ]
    env: concat(prefectClientEnv, prefectWorkerEnv)
    secretNames: prefectWorkerSecrets.outputs.secretNames
    vaultUri: keyVault.outputs.uri
    cpu: '0.25'
    memory: '0.5Gi'
    minReplicas: 1
    maxReplicas: 1
  }
}

module deadLettersJob 'modules/containerJob.bicep' = if (deployApps) {
  name: 'job-dead-letters'
  params: {
    name: 'caj-${prefix}-dead-letters'
    location: location
    tags: tags
    environmentId: appsEnvironment.outputs.environmentId
    image: image
    registryServer: appsEnvironment.outputs.registryServer
    identityId: jobsIdentity.id
    command: [
      'orchestration'
      'deadletters'
      'process'
      '--resubmit'
    ]
    env: deadLettersEnv
    secretNames: [
      'webhook-url'
    ]
    vaultUri: keyVault.outputs.uri
    cpu: '0.25'
    memory: '0.5Gi'
    cronExpression: '*/5 * * * *'
  }
  dependsOn: [
    jobsSecrets
  ]
}

module migrateJob 'modules/containerJob.bicep' = if (deployApps) {
  name: 'job-migrate'
  params: {
    name: 'caj-${prefix}-migrate'
    location: location
    tags: tags
    environmentId: appsEnvironment.outputs.environmentId
    image: image
    registryServer: appsEnvironment.outputs.registryServer
    identityId: jobsIdentity.id
    command: [
      'orchestration'
      'db'
      'migrate'
    ]
    env: migrateEnv
    secretNames: [
      'orch-db-url'
    ]
    vaultUri: keyVault.outputs.uri
    cpu: '0.5'
    memory: '1Gi'
  }
  dependsOn: [
    jobsSecrets
  ]
}

output registryServer string = appsEnvironment.outputs.registryServer
output registryName string = appsEnvironment.outputs.registryName
output prefectApiUrl string = prefectApiUrl
output apiUrl string = deployApps ? 'https://${apiApp.outputs.fqdn}' : ''
output storageAccount string = storage.outputs.accountName
output keyVaultName string = keyVault.outputs.name
output serviceBusNamespace string = serviceBus.outputs.fullyQualifiedNamespace
output runIdentityId string = executorIdentity.id
output runIdentityClientId string = executorIdentity.properties.clientId
output aciSubnetId string = network.outputs.aciSubnetId
output resourceGroupName string = resourceGroup().name
output subscriptionId string = subscription().subscriptionId
