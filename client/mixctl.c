/* client/mixctl.c — mixctl's entry point: picks the command and maps failures to the
 * documented exit codes. Main thread only. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static const struct {
        const char *name;
        int (*run)(int argc, char **argv);
        const char *help;
} commands[] = {
        { "generate", cmd_generate, "continue a prompt (argument, else stdin), streaming the text" },
        { "chat", cmd_chat, "a conversation kept in a daemon session ([INST] format)" },
        { "tokenize", cmd_tokenize, "print the token ids of stdin as a JSON array" },
        { "score", cmd_score, "per-token log probabilities of a text" },
        { "sessions", cmd_sessions, "list your sessions on the daemon" },
        { "session", cmd_session, "session open | session rm ID" },
        { "status", cmd_status, "the daemon's model, sessions, KV use, queue, tokens/s" },
        { "experts", cmd_experts, "how often the router picks each expert, per layer" },
        { "shutdown", cmd_shutdown, "stop the daemon (root or the admin group)" },
        { "logits", cmd_logits, "print raw logits for given token ids (in-process, -m)" },
        { "perplexity", cmd_perplexity, "perplexity of a text file (in-process, -m)" },
        { "bench", cmd_bench, "prefill and decode tokens/s of a model (in-process, -m)" },
};

/* generate and tokenize run in-process with -m MODEL, else through the daemon. */
static int has_model_flag(int argc, char **argv) {
        for (int i = 1; i < argc; i++) {
                if (!strcmp(argv[i], "--"))
                        break;
                if (!strcmp(argv[i], "-m") || !strcmp(argv[i], "--model") || !strncmp(argv[i], "--model=", 8) ||
                    (!strncmp(argv[i], "-m", 2) && argv[i][2]))
                        return 1;
        }
        return 0;
}

void generate_usage(void) {
        fputs("usage: mixctl generate [-m MODEL] [options] [\"prompt\"]\n"
              "Continues the prompt (the argument, else standard input read to end of file: Ctrl-D on a\n"
              "terminal) and streams the text. With -m MODEL it runs in-process; without, the mixd daemon\n"
              "runs it.\n"
              "sampling options:\n" SAMPLING_OPTS_HELP
              "in-process options (with -m):\n" MODEL_OPTS_HELP
              "daemon options (without -m):\n" REMOTE_OPTS_HELP
              "  --session ID         continue a session (see 'mixctl sessions')\n"
              "  --logprobs           with --json: each token's log probability\n",
              stdout);
}

void tokenize_usage(void) {
        fputs("usage: mixctl tokenize [-m MODEL] [--no-bos] < text\n"
              "Prints the token ids of standard input (read verbatim) as one JSON array. With -m MODEL\n"
              "it runs in-process; without, the mixd daemon runs it.\n"
              "  --no-bos             do not add the BOS token\n"
              "in-process options (with -m):\n" MODEL_OPTS_HELP
              "daemon options (without -m):\n" REMOTE_OPTS_HELP,
              stdout);
}

int cmd_generate(int argc, char **argv) {
        return has_model_flag(argc, argv) ? cmd_generate_local(argc, argv) : cmd_generate_remote(argc, argv);
}

int cmd_tokenize(int argc, char **argv) {
        return has_model_flag(argc, argv) ? cmd_tokenize_local(argc, argv) : cmd_tokenize_remote(argc, argv);
}

static void usage(FILE *out) {
        fputs("usage: mixctl COMMAND [options]\n\ncommands:\n", out);
        for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
                fprintf(out, "  %-11s %s\n", commands[i].name, commands[i].help);
        fputs("\n'mixctl COMMAND --help' or 'mixctl help COMMAND' shows a command's options;\n"
              "'mixctl --version' prints the version.\n"
              "exit codes: 0 ok, 1 runtime error, 2 usage or bad input, 3 cannot connect,\n"
              "            4 refused by the server, 130 interrupted\n", out);
}

int main(int argc, char **argv) {
        if (argc < 2) {
                usage(stderr);
                return EXIT_USAGE;
        }
        cli_install_signals();
        if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V")) {
                puts("mixctl " MIXD_VERSION);
                return cli_finish_output(EXIT_OK);
        }
        const int help = !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help");
        if (help && argc == 2) {
                usage(stdout);
                return cli_finish_output(EXIT_OK);
        }
        if (help && argc > 3) {
                cli_error("usage: mixctl help [COMMAND]");
                return EXIT_USAGE;
        }
        /* mixctl help CMD: the command's own --help */
        const char *name = help ? argv[2] : argv[1];
        for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
                if (!strcmp(name, commands[i].name)) {
                        if (help) {
                                char *args[] = { argv[2], "--help", NULL };
                                return cli_finish_output(commands[i].run(2, args));
                        }
                        return cli_finish_output(commands[i].run(argc - 1, argv + 1));
                }
        cli_error("unknown command '%s' (try 'mixctl --help')", name);
        return EXIT_USAGE;
}
