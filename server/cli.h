/*
 * sigil-server's client subcommands, shaped like spire-server's:
 * entry create|show|update|delete|count, token generate,
 * agent list|show|evict|ban|count, bundle show, healthcheck. They talk to
 * a running server over the admin API on its Unix socket (-socketPath).
 */
#ifndef SG_SERVER_CLI_H
#define SG_SERVER_CLI_H

#define SG_SERVER_CLI_DEFAULT_SOCKET "/tmp/spire-server/private/api.sock"

/*
 * Runs one subcommand. argv[0] is the program name, argv[1] the command
 * ("entry"), argv[2] its subcommand ("create") when it has one, then Go
 * style flags (-flag value, -flag=value, --flag). Calls grpc_init and
 * grpc_shutdown itself. Prints results to stdout and errors to stderr;
 * returns the process exit status (0 ok, 1 any error).
 */
int sg_server_cli_main(int argc, char **argv);

#endif
