// Development: the smallest sizes (docs/AZURE.md, "What it costs"). Secrets come from the
// environment of whoever deploys, never from this file:
//   export ORCH_PG_PASSWORD=... ORCH_API_KEYS='["..."]' ORCH_WEBHOOK_URL=https://... \
//          PREFECT_AUTH_STRING=admin:... ORCH_IMAGE=<registry>.azurecr.io/orchestration:<sha>
using '../main.bicep'

param environmentName = 'dev'
param deployApps = readEnvironmentVariable('ORCH_DEPLOY_APPS', 'true') == 'true'
param image = readEnvironmentVariable('ORCH_IMAGE', '')
param allowedIpAddresses = []

param serviceBusSku = 'Standard'
param maxDeliveryCount = 10
param lockDuration = 'PT1M'
param maxConcurrentSessions = 8

param postgresSkuName = 'Standard_B1ms'
param postgresSkuTier = 'Burstable'
param postgresStorageGB = 32
param postgresBackupRetentionDays = 7
param postgresGeoRedundantBackup = false
param postgresHighAvailability = false
param postgresAdminPassword = readEnvironmentVariable('ORCH_PG_PASSWORD')

param storageSku = 'Standard_LRS'
param registrySku = 'Basic'
param logRetentionDays = 30

param apiKeys = readEnvironmentVariable('ORCH_API_KEYS')
param webhookUrl = readEnvironmentVariable('ORCH_WEBHOOK_URL')
param prefectAuthString = readEnvironmentVariable('PREFECT_AUTH_STRING')

param ingressWorkflow = 'device-onboarding'
param httpAllowedHosts = []
param executorReplicas = 1
param executorConcurrency = 50
param listenerMinReplicas = 0
param listenerMaxReplicas = 2
param apiMinReplicas = 1
param apiMaxReplicas = 2
