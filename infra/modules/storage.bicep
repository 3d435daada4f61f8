// Blob storage for workflow definitions (ORCH_DEFINITIONS_AZURE_*) and Prefect's persisted task
// results (the step cache resumed runs replay from). No shared keys, no anonymous access; only
// the workload subnets (and the operators' addresses given) reach it.

param location string
param prefix string
param tags object

@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
])
param skuName string

param definitionsContainer string
param resultsContainer string

@description('Subnets allowed through the firewall.')
param subnetIds array

@description('Public addresses (CI, operators) that may upload definitions, e.g. ["203.0.113.7"].')
param allowedIpAddresses array

@description('Principal ids that read definitions (executor, listener, API, run containers).')
param definitionReaderPrincipalIds array

@description('Principal ids that write results (executor, run containers).')
param resultWriterPrincipalIds array

var readerRole = '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1' // Storage Blob Data Reader
var contributorRole = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe' // Storage Blob Data Contributor

// Storage account names: 3-24 lowercase letters and digits, globally unique.
resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_59:The firewall denies by default and admits only the workload subnets (service endpoints) and the listed operator addresses; Disabled would need private endpoints and private DNS for blob, which this template does not create.
  // checkov:skip=CKV_AZURE_206:Replication is a parameter per environment: prod.bicepparam sets Standard_ZRS; LRS in development is a cost choice (the data can be re-created).
  // checkov:skip=CKV_AZURE_43:The name is computed (take('st' + prefix without dashes + uniqueString, 24)): lowercase letters and digits, at most 24, which checkov cannot evaluate.
  name: take('st${replace(prefix, '-', '')}${uniqueString(resourceGroup().id)}', 24)
  location: location
  tags: tags
  sku: {
    name: skuName
  }
  kind: 'StorageV2'
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Deny'
      bypass: 'AzureServices'
      virtualNetworkRules: [
        for id in subnetIds: {
          id: id
          action: 'Allow'
        }
      ]
      ipRules: [
        for ip in allowedIpAddresses: {
          value: ip
          action: 'Allow'
        }
      ]
    }
  }
}

resource blobs 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    // Definitions are published as new versions; versioning keeps an edited one recoverable.
    isVersioningEnabled: true
  }
}

resource definitions 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobs
  name: definitionsContainer
  properties: {
    publicAccess: 'None'
  }
}

resource results 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobs
  name: resultsContainer
  properties: {
    publicAccess: 'None'
  }
}

// Scoped to one container each: readers cannot see results, writers cannot change definitions.
resource definitionReaders 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for principalId in definitionReaderPrincipalIds: {
    name: guid(definitions.id, principalId, readerRole)
    scope: definitions
    properties: {
      principalId: principalId
      principalType: 'ServicePrincipal'
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', readerRole)
    }
  }
]

resource resultWriters 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for principalId in resultWriterPrincipalIds: {
    name: guid(results.id, principalId, contributorRole)
    scope: results
    properties: {
      principalId: principalId
      principalType: 'ServicePrincipal'
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', contributorRole)
    }
  }
]

output accountName string = account.name
output blobEndpoint string = account.properties.primaryEndpoints.blob
output definitionsContainer string = definitions.name
output resultsContainer string = results.name
