// Counts the primes below N (argv[1], default 2000000) by trial division,
// calling the wasmos heartbeat every 10000 numbers: a CPU-bound task with
// safe points, the one `wasmos submit --migratable` and a drain with
// `--migrate` can move between agents mid-run.
#include <stdio.h>
#include <stdlib.h>

__attribute__((import_module("wasmos"), import_name("heartbeat"))) void wasmos_heartbeat(void);

static int is_prime(unsigned n) {
    if (n < 2) return 0;
    for (unsigned d = 2; d * d <= n; d++)
        if (n % d == 0) return 0;
    return 1;
}

int main(int argc, char **argv) {
    unsigned n = argc > 1 ? (unsigned)strtoul(argv[1], NULL, 10) : 2000000;
    unsigned count = 0;
    for (unsigned k = 0; k < n; k++) {
        if (k % 10000 == 0) wasmos_heartbeat();
        count += is_prime(k);
    }
    printf("%u primes below %u\n", count, n);
    return 0;
}
