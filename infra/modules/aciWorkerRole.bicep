// What the Prefect worker of the Azure Container Instances pool may do, and nothing more: create,
// watch and delete container groups, give them the run identity and put them in the ACI subnet,
// all within this resource group. A custom role instead of Contributor on the resource group.

param workerPrincipalId string

var actions = [
  'Microsoft.ContainerInstance/containerGroups/read'
  'Microsoft.ContainerInstance/containerGroups/write'
  'Microsoft.ContainerInstance/containerGroups/delete'
  'Microsoft.ContainerInstance/containerGroups/containers/logs/read'
  'Microsoft.Resources/deployments/read'
  'Microsoft.Resources/deployments/write'
  'Microsoft.Resources/deployments/operationStatuses/read'
  'Microsoft.ManagedIdentity/userAssignedIdentities/assign/action'
  'Microsoft.Network/virtualNetworks/subnets/join/action'
]

resource role 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(resourceGroup().id, 'prefect-aci-worker')
  properties: {
    roleName: 'Prefect ACI worker (${resourceGroup().name})'
    description: 'Starts flow-run containers in Azure Container Instances for the Prefect worker.'
    type: 'CustomRole'
    assignableScopes: [
      resourceGroup().id
    ]
    permissions: [
      {
        actions: actions
        notActions: []
      }
    ]
  }
}

resource onGroup 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(resourceGroup().id, workerPrincipalId, role.id)
  properties: {
    principalId: workerPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: role.id
  }
}
