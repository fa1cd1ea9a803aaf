/*
 * sigil-agent's client subcommands, shaped like spire-agent's:
 *   api fetch x509 [-socketPath P] [-write DIR] [-timeout D] [-silent] [-output json]
 *   api fetch      (same as api fetch x509)
 *   api fetch jwt -audience A [-audience B] [-spiffeID ID] [-socketPath P] [-output json]
 *   api validate jwt -audience A -svid TOKEN [-socketPath P]
 *   healthcheck [-socketPath P] [-shallow] [-verbose]
 */
#ifndef SG_AGENT_CLI_H
#define SG_AGENT_CLI_H

/*
 * Runs the subcommand named by argv[1..] (argv[0] is the program name) and
 * returns the process exit code: 0 on success, 1 on any failure, with the
 * reason on stderr. Initialises and shuts down gRPC itself (gRPC's init is
 * reference-counted). Call from main's thread only.
 */
int sg_agent_cli_main(int argc, char **argv);

#endif
