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
        { "tokenize", cmd_tokenize, "print the token ids of stdin as a JSON array" },
        { "logits", cmd_logits, "print raw logits for given token ids" },
        { "perplexity", cmd_perplexity, "perplexity of a text file (llama-perplexity's method)" },
};

static void usage(FILE *out) {
        fputs("usage: mixctl COMMAND [options]\n\ncommands:\n", out);
        for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
                fprintf(out, "  %-11s %s\n", commands[i].name, commands[i].help);
        fputs("\n'mixctl COMMAND --help' shows a command's options.\n"
              "exit codes: 0 ok, 1 runtime error, 2 usage or bad input, 3 cannot connect,\n"
              "            4 refused by the server, 130 interrupted\n", out);
}

int main(int argc, char **argv) {
        if (argc < 2) {
                usage(stderr);
                return EXIT_USAGE;
        }
        if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
                usage(stdout);
                return EXIT_OK;
        }
        cli_install_signals();
        for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
                if (!strcmp(argv[1], commands[i].name))
                        return commands[i].run(argc - 1, argv + 1);
        cli_error("unknown command '%s' (try 'mixctl --help')", argv[1]);
        return EXIT_USAGE;
}
