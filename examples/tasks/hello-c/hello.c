/* A wasmos task in C, built with clang + wasi-libc:
 *   clang-16 --target=wasm32-wasi -O2 -o hello-c.wasm hello.c
 * Prints its arguments, counts the bytes of any files named on the command
 * line (with --dir), and returns the number of files it could not open. */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    int missing = 0;
    printf("hello from C, %d argument(s)\n", argc - 1);
    for (int i = 1; i < argc; i++) {
        FILE *f = fopen(argv[i], "rb");
        if (!f) {
            fprintf(stderr, "cannot open %s\n", argv[i]);
            missing++;
            continue;
        }
        long n = 0;
        while (fgetc(f) != EOF) n++;
        fclose(f);
        printf("%s: %ld bytes\n", argv[i], n);
    }
    return missing;
}
