// Log Analytics (container logs) and Application Insights (the OpenTelemetry metrics exporter,
// APPLICATIONINSIGHTS_CONNECTION_STRING in operations/observability.py).

@description('Azure region.')
param location string

@description('Name prefix of every resource, e.g. orch-dev.')
param prefix string

@description('Days the workspace keeps logs.')
@minValue(30)
param retentionDays int

param tags object

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: 'log-${prefix}'
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionDays
  }
}

resource insights 'Microsoft.Insights/components@2020-02-02' = {
  name: 'appi-${prefix}'
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'other'
    WorkspaceResourceId: workspace.id
    // The exporter sends with the connection string (kept in Key Vault); Entra-only ingestion
    // would need a token credential in operations/observability.py, which it does not pass.
    DisableLocalAuth: false
  }
}

output workspaceId string = workspace.id
output workspaceName string = workspace.name
output insightsName string = insights.name
