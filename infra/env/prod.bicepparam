// Production: zone-redundant storage and database, longer backups, room to scale
// (docs/AZURE.md, "What it costs" and "Scaling"). Secrets from the pipeline's environment.
using '../main.bicep'

param environmentName = 'prod'
param deployApps = readEnvironmentVariable('ORCH_DEPLOY_APPS', 'true') == 'true'
param image = readEnvironmentVariable('ORCH_IMAGE', '')
param allowedIpAddresses = []

param serviceBusSku = 'Standard'
param maxDeliveryCount = 10
param lockDuration = 'PT1M'
param maxConcurrentSessions = 16

param postgresSkuName = 'Standard_D2ds_v5'
param postgresSkuTier = 'GeneralPurpose'
param postgresStorageGB = 128
param postgresBackupRetentionDays = 35
param postgresGeoRedundantBackup = true
param postgresHighAvailability = true
param postgresAdminPassword = readEnvironmentVariable('ORCH_PG_PASSWORD')

param storageSku = 'Standard_ZRS'
param registrySku = 'Standard'
param logRetentionDays = 90

param apiKeys = readEnvironmentVariable('ORCH_API_KEYS')
param webhookUrl = readEnvironmentVariable('ORCH_WEBHOOK_URL')
param prefectAuthString = readEnvironmentVariable('PREFECT_AUTH_STRING')

param ingressWorkflow = 'device-onboarding'
param httpAllowedHosts = []
param executorReplicas = 2
param executorConcurrency = 50
param listenerMinReplicas = 1
param listenerMaxReplicas = 8
param apiMinReplicas = 2
param apiMaxReplicas = 6
