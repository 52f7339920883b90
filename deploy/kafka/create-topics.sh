#!/bin/sh
# One-shot topic creation for docker-compose (the same names and policies as pipeline/topics.py).
set -eu
BOOTSTRAP="${KAFKA_BOOTSTRAP:-kafka:9092}"
PARTITIONS="${UNLEARN_PARTITIONS:-6}"
PREFIX="${UNLEARN_TOPIC_PREFIX:-}"
TOPICS=/opt/kafka/bin/kafka-topics.sh
DAY_MS=86400000

create() {
  name="$PREFIX$1"; shift
  "$TOPICS" --bootstrap-server "$BOOTSTRAP" --create --if-not-exists \
    --topic "$name" --partitions "$PARTITIONS" --replication-factor 1 "$@"
  echo "topic $name ready"
}

# records: segments roll daily and a tombstoned segment is compacted within 7 days, so
# erased features leave the log well inside the legal deadline (pipeline/topics.py)
create unlearn.records        --config cleanup.policy=compact --config segment.ms=$DAY_MS \
  --config max.compaction.lag.ms=$((7 * DAY_MS)) --config delete.retention.ms=$DAY_MS
create unlearn.model-updates  --config cleanup.policy=compact
create unlearn.deletions      --config cleanup.policy=delete --config retention.ms=$((400 * DAY_MS))
# internal: requests routed to one model, partitioned as unlearn.records (same count!)
create unlearn.model-ops      --config cleanup.policy=delete --config retention.ms=$((7 * DAY_MS))
create unlearn.retrain        --config cleanup.policy=delete
create unlearn.receipts       --config cleanup.policy=delete
# dead letters carry rejected messages' bytes (possibly personal data): gone within a week
create unlearn.dead-letter    --config cleanup.policy=delete --config retention.ms=$((7 * DAY_MS))
create unlearn.federated      --config cleanup.policy=delete
