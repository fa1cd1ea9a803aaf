# Sourced by scripts/demo.sh and bench/run.sh: SPIRE-format configs for a
# sigil-server and a sigil-agent on loopback with SQLite, in one temp dir.

# write_server_conf FILE PORT ADMIN_SOCKET DIR LOG_LEVEL KEY_MANAGER (disk|memory)
write_server_conf() {
    local keys='plugin_data {}'
    [ "$6" = disk ] && keys="plugin_data {
            keys_path = \"$4/data/keys.json\"
        }"
    cat >"$1" <<CONF
server {
    bind_address = "127.0.0.1"
    bind_port = "$2"
    socket_path = "$3"
    trust_domain = "example.org"
    data_dir = "$4/data"
    log_level = "$5"
    default_x509_svid_ttl = "1h"
}
plugins {
    DataStore "sql" {
        plugin_data {
            database_type = "sqlite3"
            connection_string = "$4/data/datastore.sqlite3"
        }
    }
    NodeAttestor "join_token" {
        plugin_data {}
    }
    KeyManager "$6" {
        $keys
    }
}
CONF
}

# write_agent_conf FILE PORT WORKLOAD_SOCKET DIR BUNDLE LOG_LEVEL KEY_MANAGER (disk|memory)
write_agent_conf() {
    local keys='plugin_data {}'
    [ "$7" = disk ] && keys="plugin_data {
            directory = \"$4/data\"
        }"
    cat >"$1" <<CONF
agent {
    data_dir = "$4/data"
    log_level = "$6"
    server_address = "127.0.0.1"
    server_port = "$2"
    socket_path = "$3"
    trust_bundle_path = "$5"
    trust_domain = "example.org"
}
plugins {
    NodeAttestor "join_token" {
        plugin_data {}
    }
    KeyManager "$7" {
        $keys
    }
    WorkloadAttestor "unix" {
        plugin_data {}
    }
}
CONF
}
