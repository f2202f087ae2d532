#!/usr/bin/env bash
# Deploys the gateway to several regions: the same stack in each, one DynamoDB global table shared by all.
#
#   infra/deploy.sh eu-central-1 us-east-1 ap-southeast-1
#
# The first region is the table's home: its stack creates the table (CreateTable=true); this script then adds a
# replica in every other region (global tables version 2019.11.21, fed by the table's stream) and deploys their
# stacks with CreateTable=false, all with the same TableName. A later run with more regions adds their replicas;
# keep the same first region. Re-running is safe: deploys with no change and existing replicas are skipped.
#
# Environment:
#   STACK_NAME         stack and table name in every region (default llm-gateway)
#   GATEWAY_PARAMETERS more parameter overrides, e.g. "SpendAlarmUsd=100 AlarmTopicArn=arn:aws:sns:..."
#                      (config/REGION.yaml, when it exists, becomes that region's ConfigFile)
#   DOMAIN, HOSTED_ZONE_ID  also deploy infra/dns.yaml in each region: DOMAIN answered by the nearest
#                      healthy region (Route 53 latency records); CERTIFICATE_ARN_<region with _> optional
#   SKIP_BUILD=1       reuse the last `sam build`
#   REPLICA_WAIT_SECONDS  how long a new replica may take to be ACTIVE before the script fails (default 1800)
set -euo pipefail

if [ "$#" -lt 1 ]; then
  # (the comment above, to the first line of code)
  sed -n '2,${/^#/!q;p}' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi

cd "$(dirname "$0")/.."
STACK_NAME="${STACK_NAME:-llm-gateway}"
HOME_REGION="$1"
REGIONS=("$@")
export SAM_CLI_TELEMETRY="${SAM_CLI_TELEMETRY:-0}"

say() { printf '\n== %s\n' "$*" >&2; }

deploy_region() {
  local region="$1" create_table="$2"
  local overrides=("TableName=${STACK_NAME}" "CreateTable=${create_table}")
  if [ -f "config/${region}.yaml" ]; then
    overrides+=("ConfigFile=config/${region}.yaml")
  fi
  # shellcheck disable=SC2206 # GATEWAY_PARAMETERS is a space-separated list of Key=Value
  overrides+=(${GATEWAY_PARAMETERS:-})
  say "deploying ${STACK_NAME} to ${region} (CreateTable=${create_table})"
  sam deploy --region "$region" --stack-name "$STACK_NAME" --capabilities CAPABILITY_IAM --resolve-s3 \
    --no-confirm-changeset --no-fail-on-empty-changeset --parameter-overrides "${overrides[@]}"
}

replica_status() {
  aws dynamodb describe-table --region "$HOME_REGION" --table-name "$STACK_NAME" \
    --query "Table.Replicas[?RegionName=='$1'].ReplicaStatus | [0]" --output text
}

add_replica() {
  local region="$1" status
  status="$(replica_status "$region")"
  if [ "$status" != "None" ]; then
    say "replica in ${region}: ${status}"
  else
    say "adding a replica of ${STACK_NAME} in ${region}"
    aws dynamodb update-table --region "$HOME_REGION" --table-name "$STACK_NAME" \
      --replica-updates "Create={RegionName=${region}}" --output text --query 'Table.TableStatus' >/dev/null
  fi
  # One replica is added at a time: the table must be ACTIVE again before the next update. A replica that cannot be
  # made (a region not enabled in the account, a quota, a key it cannot use) fails the run, saying its status, as
  # one still not ACTIVE after REPLICA_WAIT_SECONDS does: it waited forever.
  local waits=$(( ${REPLICA_WAIT_SECONDS:-1800} / 15 ))
  status="$(replica_status "$region")"
  while [ "$status" != "ACTIVE" ]; do
    case "$status" in
      CREATING | UPDATING) ;;
      *)
        say "the replica in ${region} is ${status}, not ACTIVE: see the table's Global tables tab in ${HOME_REGION}"
        exit 1
        ;;
    esac
    if [ "$waits" -le 0 ]; then
      say "the replica in ${region} is still ${status} after ${REPLICA_WAIT_SECONDS:-1800} s: run again once it is" \
        "ACTIVE (aws dynamodb describe-table --region ${HOME_REGION} --table-name ${STACK_NAME}), or set" \
        "REPLICA_WAIT_SECONDS higher"
      exit 1
    fi
    waits=$(( waits - 1 ))
    sleep 15
    status="$(replica_status "$region")"
  done
  aws dynamodb wait table-exists --region "$HOME_REGION" --table-name "$STACK_NAME"
  # Continuous backups are a per-replica setting.
  aws dynamodb update-continuous-backups --region "$region" --table-name "$STACK_NAME" \
    --point-in-time-recovery-specification PointInTimeRecoveryEnabled=true >/dev/null
}

deploy_dns() {
  local region="$1" api_id cert_var cert
  api_id="$(aws cloudformation describe-stacks --region "$region" --stack-name "$STACK_NAME" \
    --query "Stacks[0].Outputs[?OutputKey=='HttpApiId'].OutputValue | [0]" --output text)"
  cert_var="CERTIFICATE_ARN_${region//-/_}"
  cert="${!cert_var:-}"
  say "custom domain ${DOMAIN} in ${region}"
  sam deploy --template-file infra/dns.yaml --region "$region" --stack-name "${STACK_NAME}-dns" \
    --no-confirm-changeset --no-fail-on-empty-changeset \
    --parameter-overrides "DomainName=${DOMAIN}" "HostedZoneId=${HOSTED_ZONE_ID}" "HttpApiId=${api_id}" \
    ${cert:+"CertificateArn=${cert}"}  # (none given: the stack's default; `CertificateArn=` alone is refused)
}

if [ -z "${SKIP_BUILD:-}" ]; then
  say "building"
  sam build
fi

deploy_region "$HOME_REGION" true
for region in "${REGIONS[@]:1}"; do
  add_replica "$region"
done
for region in "${REGIONS[@]:1}"; do
  deploy_region "$region" false
done

if [ -n "${DOMAIN:-}" ]; then
  : "${HOSTED_ZONE_ID:?set HOSTED_ZONE_ID with DOMAIN}"
  for region in "${REGIONS[@]}"; do
    deploy_dns "$region"
  done
fi

say "endpoints"
for region in "${REGIONS[@]}"; do
  aws cloudformation describe-stacks --region "$region" --stack-name "$STACK_NAME" \
    --query "Stacks[0].Outputs[?OutputKey=='ApiEndpoint' || OutputKey=='StreamEndpoint'].[OutputKey,OutputValue]" \
    --output text | sed "s/^/${region}\t/"
done
