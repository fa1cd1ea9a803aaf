/*
 * sigil-server federation commands, shaped like spire-server's:
 * federation create|update|list|show|delete|refresh and
 * bundle set|list|delete, over the admin API socket.
 */
#ifndef SG_SERVER_CLI_FEDERATION_H
#define SG_SERVER_CLI_FEDERATION_H

#include <stdbool.h>
#include <stdio.h>

/*
 * Whether argv (program, command, subcommand, ...) names one of the
 * commands above.
 */
bool sg_server_cli_federation_handles(int argc, char **argv);

/* Runs it (calls grpc_init/grpc_shutdown itself); returns the exit status. */
int sg_server_cli_federation_main(int argc, char **argv);

/* Prints this module's commands of group (all when NULL) in the CLI's command list layout. */
void sg_server_cli_federation_list(FILE *f, const char *group);

#endif
