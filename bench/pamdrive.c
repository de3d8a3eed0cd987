/*
 * pamdrive: full PAM transactions through the real libpam, timed.
 *
 *   pamdrive SERVICE CONFDIR CODES FIRST STRIDE START_NS
 *
 * CODES holds lines "user code". This process takes lines FIRST, FIRST+STRIDE, ...
 * (so STRIDE processes share one file), waits until CLOCK_MONOTONIC reaches
 * START_NS (so concurrent drivers start together; 0 = at once), and for each line
 * runs pam_start_confdir(SERVICE, user, CONFDIR) -> pam_authenticate -> pam_end,
 * answering every prompt with the line's code. The service file comes from
 * CONFDIR, so /etc/pam.d is never read.
 *
 * Why C: a Python driver adds its own milliseconds and noise to what we compare.
 *
 * Prints "refused USER RET" for every transaction that did not return
 * PAM_SUCCESS, a line "latencies_us=" with every transaction's latency (for exact
 * percentiles over several processes), then one summary line of key=value:
 * transactions, ok, ret.N counts, t0_ns/t1_ns (CLOCK_MONOTONIC, comparable across
 * processes), p50_us, p99_us.
 */
#define _GNU_SOURCE
#include <security/pam_appl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_LINE 512
#define MAX_RET 64

struct answer {
    const char *code;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int converse(int n, const struct pam_message **msg, struct pam_response **resp, void *appdata)
{
    const struct answer *answer = appdata;
    struct pam_response *out = calloc((size_t)n, sizeof *out);
    if (!out)
        return PAM_BUF_ERR;
    for (int i = 0; i < n; i++) {
        if (msg[i]->msg_style == PAM_PROMPT_ECHO_OFF || msg[i]->msg_style == PAM_PROMPT_ECHO_ON) {
            out[i].resp = strdup(answer->code);
            if (!out[i].resp) {
                for (int j = 0; j < i; j++)
                    free(out[j].resp);
                free(out);
                return PAM_BUF_ERR;
            }
        }
    }
    *resp = out;
    return PAM_SUCCESS;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (argc != 7) {
        fprintf(stderr, "usage: pamdrive SERVICE CONFDIR CODES FIRST STRIDE START_NS\n");
        return 2;
    }
    const char *service = argv[1], *confdir = argv[2];
    long first = atol(argv[4]), stride = atol(argv[5]);
    uint64_t start_at = strtoull(argv[6], NULL, 10);
    FILE *f = fopen(argv[3], "r");
    if (!f || first < 0 || stride < 1) {
        perror(argv[3]);
        return 2;
    }
    size_t n = 0, cap = 1024;
    char (*users)[MAX_LINE] = malloc(cap * sizeof *users);
    char (*codes)[16] = malloc(cap * sizeof *codes);
    char line[MAX_LINE];
    for (long index = 0; users && codes && fgets(line, sizeof line, f); index++) {
        if (index < first || (index - first) % stride != 0)
            continue;
        if (n == cap) {
            cap *= 2;
            users = realloc(users, cap * sizeof *users);
            codes = realloc(codes, cap * sizeof *codes);
            if (!users || !codes)
                break;
        }
        if (sscanf(line, "%511s %15s", users[n], codes[n]) != 2) {
            fprintf(stderr, "pamdrive: %s: bad line %ld\n", argv[3], index + 1);
            return 2;
        }
        n++;
    }
    fclose(f);
    uint64_t *latency = malloc((n + 1) * sizeof *latency);
    if (!users || !codes || !latency) {
        fprintf(stderr, "pamdrive: out of memory\n");
        return 2;
    }
    unsigned long rets[MAX_RET] = {0};
    size_t ok = 0;

    while (start_at && now_ns() < start_at) {
        struct timespec pause = {0, 200000};
        nanosleep(&pause, NULL);
    }
    uint64_t t0 = now_ns();
    for (size_t i = 0; i < n; i++) {
        struct answer answer = {codes[i]};
        struct pam_conv conv = {converse, &answer};
        pam_handle_t *pamh = NULL;
        uint64_t began = now_ns();
        int ret = pam_start_confdir(service, users[i], &conv, confdir, &pamh);
        if (ret != PAM_SUCCESS) {
            fprintf(stderr, "pamdrive: pam_start_confdir: %d\n", ret);
            return 2;
        }
        ret = pam_authenticate(pamh, PAM_SILENT);
        pam_end(pamh, ret);
        latency[i] = now_ns() - began;
        rets[ret >= 0 && ret < MAX_RET ? ret : MAX_RET - 1]++;
        if (ret == PAM_SUCCESS)
            ok++;
        else
            printf("refused %s %d\n", users[i], ret);
    }
    uint64_t t1 = now_ns();
    printf("latencies_us=");
    for (size_t i = 0; i < n; i++)
        printf("%s%.1f", i ? "," : "", latency[i] / 1e3);
    printf("\n");
    qsort(latency, n, sizeof *latency, cmp_u64);
    printf("transactions=%zu ok=%zu", n, ok);
    for (int r = 0; r < MAX_RET; r++)
        if (rets[r] && r != PAM_SUCCESS)
            printf(" ret.%d=%lu", r, rets[r]);
    printf(" t0_ns=%llu t1_ns=%llu", (unsigned long long)t0, (unsigned long long)t1);
    if (n)
        printf(" p50_us=%.1f p99_us=%.1f", latency[n / 2] / 1e3, latency[n * 99 / 100] / 1e3);
    printf("\n");
    return 0;
}
