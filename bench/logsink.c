/*
 * logsink: bind a datagram socket at PATH and discard what arrives.
 *
 *   logsink PATH
 *
 * The benchmark serves /dev/log with it inside a private mount namespace, so that
 * syslog() from the PAM modules and the daemon's audit lines cost what they cost
 * with a real syslog daemon (one sendto), not glibc's LOG_CONS fallback to
 * /dev/console (~1.3 ms a line). C, so the sink takes no CPU the measurement needs.
 * On SIGTERM prints "messages=N" and exits.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void on_term(int sig)
{
    (void)sig;
    stop = 1;
}

int main(int argc, char **argv)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (argc != 2 || strlen(argv[1]) >= sizeof addr.sun_path) {
        fprintf(stderr, "usage: logsink PATH\n");
        return 2;
    }
    strcpy(addr.sun_path, argv[1]);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    unlink(argv[1]);
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        perror(argv[1]);
        return 2;
    }
    struct sigaction sa = {.sa_handler = on_term}; /* no SA_RESTART: recv returns EINTR */
    sigaction(SIGTERM, &sa, NULL);
    printf("ready\n");
    fflush(stdout);
    unsigned long messages = 0;
    char buf[8192];
    while (!stop)
        if (recv(fd, buf, sizeof buf, 0) >= 0)
            messages++;
    printf("messages=%lu\n", messages);
    return 0;
}
