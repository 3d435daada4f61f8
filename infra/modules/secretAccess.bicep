// Key Vault Secrets User on each named secret, not on the vault: an identity reads only the
// secrets its process is configured with.

param vaultName string
param secretNames array
param principalId string

var secretsUserRole = '4633458b-17de-408a-b874-0445c86b69e6' // Key Vault Secrets User

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: vaultName
}

resource secrets 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = [
  for name in secretNames: {
    parent: vault
    name: name
  }
]

resource access 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for (name, i) in secretNames: {
    name: guid(vault.id, name, principalId, secretsUserRole)
    scope: secrets[i]
    properties: {
      principalId: principalId
      principalType: 'ServicePrincipal'
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', secretsUserRole)
    }
  }
]

@description('The secrets granted: what the process may reference (secretRef) and nothing else.')
output secretNames array = secretNames
