// Key Vault with the system's secrets. Container Apps read them by reference with their managed
// identity (secretAccess.bicep grants each identity only the secrets it names); no secret is a
// plain environment value in a template or a deployment's job variables.

param location string
param prefix string
param tags object

@description('Subnets allowed through the firewall.')
param subnetIds array

@description('Public addresses (CI, operators) that may manage secrets.')
param allowedIpAddresses array

param postgresHost string
param postgresLogin string

@secure()
param postgresPassword string

param prefectDatabase string
param orchestrationDatabase string

@secure()
@description('JSON list of API keys, e.g. ["k1","k2"] (ORCH_API_API_KEYS).')
param apiKeys string

@secure()
@description('Alerts and notifications webhook (Teams, Slack, PagerDuty).')
param webhookUrl string

@secure()
@description('user:password that the Prefect server demands of its clients.')
param prefectAuthString string

param insightsName string

@description('Log Analytics workspace that receives the diagnostic logs.')
param workspaceId string

resource insights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: insightsName
}

// Key Vault names: 3-24 characters, globally unique.
resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: take('kv-${prefix}-${uniqueString(resourceGroup().id)}', 24)
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Deny'
      bypass: 'AzureServices'
      virtualNetworkRules: [
        for id in subnetIds: {
          id: id
          ignoreMissingVnetServiceEndpoint: false
        }
      ]
      ipRules: [
        for ip in allowedIpAddresses: {
          value: ip
        }
      ]
    }
  }
}

var password = uriComponent(postgresPassword)
var server = '${postgresLogin}:${password}@${postgresHost}:5432'

// Secret name -> value. The names are what the Container Apps reference (main.bicep).
var secrets = {
  'orch-db-url': 'postgresql+asyncpg://${server}/${orchestrationDatabase}?ssl=require'
  'prefect-db-url': 'postgresql+asyncpg://${server}/${prefectDatabase}'
  'db-password': postgresPassword
  'api-keys': apiKeys
  'webhook-url': webhookUrl
  'prefect-auth-string': prefectAuthString
  'appinsights-connection-string': insights.properties.ConnectionString
}

resource values 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = [
  for secret in items(secrets): {
    // checkov:skip=CKV_AZURE_41:Key Vault refuses to return an expired secret, so an expiry would stop every Container App at a date rather than force a rotation; they are rotated by redeploying with new values (docs/AZURE.md, Rotating secrets).
    parent: vault
    name: secret.key
    properties: {
      value: secret.value
      contentType: 'text/plain'
    }
  }
]

// Its logs and metrics go to the Log Analytics workspace (docs/AZURE.md, "Monitoring").
resource diagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: vault
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

output name string = vault.name
output uri string = vault.properties.vaultUri
output secretNames array = [for secret in items(secrets): secret.key]
