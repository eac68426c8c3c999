# A three-node Kafka cluster for the fault tests, sourced by scripts/dev-services.
#
# Three KRaft nodes, each broker and controller (a controller quorum of three), on loopback:
# node N listens for clients on 127.0.0.1:910N and for the quorum on 127.0.0.1:911N. Topics
# get replication factor 3 and min.insync.replicas=2 by default, as a production cluster
# would; the internal topics (consumer offsets, transaction state) likewise. Data, logs and
# pids live under $DEV_DIR/cluster/nodeN; every node is formatted with the same cluster id.
#
# cluster-up | cluster-down | cluster-status
# cluster-node-up N | cluster-node-down N (SIGTERM, a clean stop) | cluster-node-kill N (SIGKILL)
# cluster-node-pid N (for a test that sends SIGSTOP/SIGCONT itself); cluster-controller: the
# active controller's node id
# env --cluster: what a client needs (brokers, CHOREO_REPLICATION=3)

CLUSTER_DIR="$DEV_DIR/cluster"
CLUSTER_NODES=(1 2 3)
CLUSTER_HEAP="${CHOREO_CLUSTER_HEAP:-512m}"

cluster_port() { echo $((9100 + $1)); }
cluster_controller_port() { echo $((9110 + $1)); }
cluster_node_dir() { echo "$CLUSTER_DIR/node$1"; }
cluster_pid_file() { echo "$(cluster_node_dir "$1")/kafka.pid"; }
cluster_log() { echo "$(cluster_node_dir "$1")/kafka.log"; }
cluster_brokers() {
  local n out=""
  for n in "${CLUSTER_NODES[@]}"; do out="$out${out:+,}127.0.0.1:$(cluster_port "$n")"; done
  echo "$out"
}

cluster_check_node() {
  case "${1:-}" in 1|2|3) ;; *) echo "usage: $0 cluster-node-up|cluster-node-down|cluster-node-kill|cluster-node-pid 1|2|3" >&2; exit 2 ;; esac
}

cluster_config() {
  local n=$1 dir voters="" m
  dir=$(cluster_node_dir "$n")
  mkdir -p "$dir"
  for m in "${CLUSTER_NODES[@]}"; do voters="$voters${voters:+,}$m@127.0.0.1:$(cluster_controller_port "$m")"; done
  cat >"$dir/server.properties" <<PROPS
# Written by scripts/dev-services: node $n of the three-node development cluster.
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$(cluster_port "$n"),CONTROLLER://127.0.0.1:$(cluster_controller_port "$n")
advertised.listeners=PLAINTEXT://127.0.0.1:$(cluster_port "$n")
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=1
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
transaction.state.log.num.partitions=10
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
unclean.leader.election.enable=false
delete.topic.enable=true
group.consumer.session.timeout.ms=10000
group.consumer.min.session.timeout.ms=2000
group.min.session.timeout.ms=2000
transaction.abort.timed.out.transaction.cleanup.interval.ms=2000
replica.lag.time.max.ms=10000
log.retention.check.interval.ms=60000
PROPS
}

cluster_node_ready() {
  port_open "$(cluster_port "$1")" && grep -q "Kafka Server started" "$(cluster_log "$1")" 2>/dev/null
}

cluster_node_running() {
  local pid_file; pid_file=$(cluster_pid_file "$1")
  [ -f "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null
}

# Starts node N without waiting for it.
cluster_node_start() {
  local n=$1 dir log
  dir=$(cluster_node_dir "$n"); log=$(cluster_log "$n")
  if cluster_node_running "$n"; then return; fi
  cluster_config "$n"
  if [ ! -f "$dir/data/meta.properties" ]; then
    kafka_java kafka.tools.StorageTool format -t "$(cat "$CLUSTER_DIR/cluster.id")" -c "$dir/server.properties" \
      >"$dir/format.log" 2>&1 || { cat "$dir/format.log" >&2; fail "cluster: formatting node $n failed"; }
  fi
  : >"$log"
  setsid nohup java -Xms256m -Xmx"$CLUSTER_HEAP" -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$KAFKA_HOME/log4j2.properties" \
    -cp "$KAFKA_HOME/libs/*" kafka.Kafka "$dir/server.properties" \
    >"$log" 2>&1 </dev/null &
  echo $! >"$(cluster_pid_file "$n")"
}

cluster_node_wait() {
  local n=$1 i
  for i in $(seq 1 120); do
    if cluster_node_ready "$n"; then say "cluster: node $n ready on 127.0.0.1:$(cluster_port "$n") after ${i}s"; return; fi
    if ! cluster_node_running "$n"; then
      tail -30 "$(cluster_log "$n")" >&2; fail "cluster: node $n exited during start (log: $(cluster_log "$n"))"
    fi
    sleep 1
  done
  tail -30 "$(cluster_log "$n")" >&2
  fail "cluster: node $n not answering after 120s (log: $(cluster_log "$n"))"
}

cluster_up() {
  kafka_fetch
  kafka_config_log4j
  mkdir -p "$CLUSTER_DIR"
  if [ ! -s "$CLUSTER_DIR/cluster.id" ]; then
    kafka_java kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1 >"$CLUSTER_DIR/cluster.id"
  fi
  local n
  # All three at once: a node waits for a quorum of controllers before it reports started.
  for n in "${CLUSTER_NODES[@]}"; do cluster_node_start "$n"; done
  for n in "${CLUSTER_NODES[@]}"; do cluster_node_wait "$n"; done
  say "cluster: ready on $(cluster_brokers) (exports: scripts/dev-services env --cluster)"
}

cluster_node_down() {
  local n=$1 signal=${2:-TERM} pid_file pid
  pid_file=$(cluster_pid_file "$n")
  if ! cluster_node_running "$n"; then say "cluster: node $n not running"; rm -f "$pid_file"; return; fi
  pid=$(cat "$pid_file")
  say "cluster: stopping node $n (pid $pid, SIG$signal)"
  kill -CONT "$pid" 2>/dev/null || true
  kill -"$signal" "$pid"
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pid_file"
}

cluster_down() {
  local n
  for n in "${CLUSTER_NODES[@]}"; do cluster_node_down "$n"; done
}

cluster_status() {
  local n
  for n in "${CLUSTER_NODES[@]}"; do
    if cluster_node_ready "$n" && cluster_node_running "$n"; then
      say "cluster: node $n up on 127.0.0.1:$(cluster_port "$n") (pid $(cat "$(cluster_pid_file "$n")"))"
    else
      say "cluster: node $n down"
    fi
  done
}

cluster_env() {
  echo "export CHOREO_KAFKA_BROKERS=$(cluster_brokers)"
  echo "export CHOREO_CLUSTER_BROKERS=$(cluster_brokers)"
  echo "export CHOREO_REPLICATION=3"
  echo "export CHOREO_CLUSTER_DIR=$CLUSTER_DIR"
  echo "export CHOREO_DATABASE_URL=postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB"
}

# The node id of the active controller (the quorum's leader), asked of a running node.
cluster_controller() {
  local n
  for n in "${CLUSTER_NODES[@]}"; do
    cluster_node_ready "$n" || continue
    kafka_java org.apache.kafka.tools.MetadataQuorumCommand \
      --bootstrap-server "127.0.0.1:$(cluster_port "$n")" describe --status 2>/dev/null \
      | awk -F': *' '$1 == "LeaderId" { print $2; found = 1 } END { exit !found }' && return
  done
  fail "cluster: no node answered with the active controller"
}
