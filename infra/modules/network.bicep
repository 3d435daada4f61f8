// The virtual network: one subnet for the Container Apps environment, one delegated to
// PostgreSQL Flexible Server (private access only), one for the Azure Container Instances that the
// Prefect worker starts. Storage and Key Vault admit these subnets (service endpoints) and no
// other network.

param location string
param prefix string
param tags object

@description('Address space of the network, and the three subnets inside it.')
param addressPrefix string = '10.40.0.0/22'
param appsSubnetPrefix string = '10.40.0.0/23'
param postgresSubnetPrefix string = '10.40.2.0/24'
param aciSubnetPrefix string = '10.40.3.0/24'

var serviceEndpoints = [
  {
    service: 'Microsoft.Storage'
  }
  {
    service: 'Microsoft.KeyVault'
  }
]

resource vnet 'Microsoft.Network/virtualNetworks@2024-01-01' = {
  name: 'vnet-${prefix}'
  location: location
  tags: tags
  properties: {
    addressSpace: {
      addressPrefixes: [
        addressPrefix
      ]
    }
    subnets: [
      {
        // Workload-profiles environments need /27 or larger, delegated to Microsoft.App.
        name: 'apps'
        properties: {
          addressPrefix: appsSubnetPrefix
          serviceEndpoints: serviceEndpoints
          delegations: [
            {
              name: 'apps'
              properties: {
                serviceName: 'Microsoft.App/environments'
              }
            }
          ]
        }
      }
      {
        name: 'postgres'
        properties: {
          addressPrefix: postgresSubnetPrefix
          delegations: [
            {
              name: 'postgres'
              properties: {
                serviceName: 'Microsoft.DBforPostgreSQL/flexibleServers'
              }
            }
          ]
        }
      }
      {
        name: 'aci'
        properties: {
          addressPrefix: aciSubnetPrefix
          serviceEndpoints: serviceEndpoints
          delegations: [
            {
              name: 'aci'
              properties: {
                serviceName: 'Microsoft.ContainerInstance/containerGroups'
              }
            }
          ]
        }
      }
    ]
  }
}

output appsSubnetId string = vnet.properties.subnets[0].id
output postgresSubnetId string = vnet.properties.subnets[1].id
output aciSubnetId string = vnet.properties.subnets[2].id
output vnetId string = vnet.id
