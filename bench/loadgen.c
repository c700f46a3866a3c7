/*
 * socks5twist's load generator: a small C program, so that it is never the
 * bottleneck of the benchmark, and so that it checks every byte it receives.
 *
 *   loadgen serve PORT
 *       The destination server: per connection, one command byte then:
 *       'U' + u64 n : read n bytes, verify the pattern, answer "K".
 *       'D' + u64 n : send n bytes of the pattern.
 *       'P' + u32 size : echo messages of size bytes until EOF.
 *       'E'            : echo one byte and close.
 *
 *   loadgen CMD [--proxy HOST:PORT] --target HOST:PORT [options]
 *       throughput --streams N --bytes B --dir up|down
 *       latency    --size S --count K
 *       sessions   --concurrency C --seconds T
 *       idle       --count N   (open N tunnels, print {"opened": N, ...}, wait for EOF on stdin)
 *
 * Output is one line of JSON.  Every wait is bounded by a socket timeout.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define PATTERN_PERIOD ((1 << 20) + 13)
#define CHUNK (1 << 20)
static unsigned char *pattern; /* PATTERN_PERIOD + CHUNK bytes, so any offset has CHUNK ahead */

static void die(const char *what) { perror(what); exit(2); }
static double now(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}
static void make_pattern(void) {
    pattern = malloc(PATTERN_PERIOD + CHUNK);
    uint32_t x = 2463534242u;
    for (size_t i = 0; i < PATTERN_PERIOD + CHUNK; i++) {
        if (i < PATTERN_PERIOD) { x ^= x << 13; x ^= x >> 17; x ^= x << 5; pattern[i] = (unsigned char)x; }
        else pattern[i] = pattern[i - PATTERN_PERIOD];
    }
}
static int read_full(int fd, void *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = recv(fd, (char *)buf + got, n - got, 0);
        if (r == 0) return -1;
        if (r < 0) { if (errno == EINTR) continue; return -1; }
        got += (size_t)r;
    }
    return 0;
}
static int write_full(int fd, const void *buf, size_t n) {
    size_t sent = 0;
    while (sent < n) {
        ssize_t w = send(fd, (const char *)buf + sent, n - sent, MSG_NOSIGNAL);
        if (w < 0) { if (errno == EINTR) continue; return -1; }
        sent += (size_t)w;
    }
    return 0;
}
static void timeouts(int fd, int seconds) {
    struct timeval tv = {seconds, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* ---- server ---------------------------------------------------------- */

static void *serve_one(void *arg) {
    int fd = (int)(intptr_t)arg;
    timeouts(fd, 60);
    unsigned char cmd;
    if (read_full(fd, &cmd, 1) < 0) goto out;
    if (cmd == 'U' || cmd == 'D') {
        uint64_t n;
        if (read_full(fd, &n, 8) < 0) goto out;
        unsigned char *buf = malloc(CHUNK);
        uint64_t done = 0;
        int ok = 1;
        while (done < n) {
            size_t want = n - done < CHUNK ? (size_t)(n - done) : CHUNK;
            size_t off = done % PATTERN_PERIOD;
            if (cmd == 'D') {
                if (write_full(fd, pattern + off, want) < 0) { ok = 0; break; }
                done += want;
            } else {
                ssize_t r = recv(fd, buf, want, 0);
                if (r <= 0) { ok = 0; break; }
                if (memcmp(buf, pattern + off, (size_t)r) != 0) { ok = 0; break; }
                done += (uint64_t)r;
            }
        }
        if (cmd == 'U') write_full(fd, ok ? "K" : "X", 1);
        free(buf);
    } else if (cmd == 'P') {
        uint32_t size;
        if (read_full(fd, &size, 4) < 0 || size > CHUNK) goto out;
        unsigned char *buf = malloc(size);
        while (read_full(fd, buf, size) == 0)
            if (write_full(fd, buf, size) < 0) break;
        free(buf);
    } else if (cmd == 'E') {
        unsigned char b;
        if (read_full(fd, &b, 1) == 0) write_full(fd, &b, 1);
    }
out:
    close(fd);
    return NULL;
}

static int serve(int port) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(s, (void *)&a, sizeof a) < 0) die("bind");
    if (listen(s, 4096) < 0) die("listen");
    printf("listening\n"); fflush(stdout);
    pthread_attr_t attr; pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) { if (errno == EINTR || errno == ECONNABORTED) continue; usleep(1000); continue; }
        pthread_t t;
        if (pthread_create(&t, &attr, serve_one, (void *)(intptr_t)c) != 0) close(c);
    }
    return 0;
}

/* ---- client ---------------------------------------------------------- */

static struct sockaddr_in proxy, target;
static int use_proxy = 0;

static void parse_addr(const char *text, struct sockaddr_in *a) {
    char host[64]; int port;
    if (sscanf(text, "%63[^:]:%d", host, &port) != 2) { fprintf(stderr, "bad address %s\n", text); exit(2); }
    memset(a, 0, sizeof *a);
    a->sin_family = AF_INET; a->sin_port = htons(port);
    if (inet_pton(AF_INET, host, &a->sin_addr) != 1) { fprintf(stderr, "bad host %s\n", host); exit(2); }
}

/* Connect to the target, through the proxy if there is one; -1 on failure. */
static int open_tunnel(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    timeouts(fd, 30);
    struct sockaddr_in *to = use_proxy ? &proxy : &target;
    if (connect(fd, (void *)to, sizeof *to) < 0) { close(fd); return -1; }
    if (use_proxy) {
        /* Greeting, then request, each waiting for its answer, as most clients
         * do (not every server takes them pipelined). */
        unsigned char greeting[3] = {5, 1, 0}, req[10] = {5, 1, 0, 1}, rep[10];
        memcpy(req + 4, &target.sin_addr, 4);
        memcpy(req + 8, &target.sin_port, 2);
        if (write_full(fd, greeting, 3) < 0 || read_full(fd, rep, 2) < 0 ||
            rep[0] != 5 || rep[1] != 0 ||
            write_full(fd, req, 10) < 0 || read_full(fd, rep, 10) < 0 ||
            rep[0] != 5 || rep[1] != 0 || rep[3] != 1) { close(fd); return -1; }
    }
    return fd;
}

static uint64_t opt_bytes = 512ull << 20;
static int opt_streams = 1, opt_up = 1, opt_size = 1, opt_count = 10000, opt_conc = 1;
static double opt_seconds = 2.0;
static volatile int errors = 0;

static void *stream_worker(void *arg) {
    (void)arg;
    int fd = open_tunnel();
    if (fd < 0) { __sync_fetch_and_add(&errors, 1); return NULL; }
    uint64_t n = opt_bytes;
    unsigned char cmd[9]; cmd[0] = opt_up ? 'U' : 'D'; memcpy(cmd + 1, &n, 8);
    if (write_full(fd, cmd, 9) < 0) { __sync_fetch_and_add(&errors, 1); close(fd); return NULL; }
    uint64_t done = 0;
    unsigned char *buf = opt_up ? NULL : malloc(CHUNK);
    while (done < n) {
        size_t want = n - done < CHUNK ? (size_t)(n - done) : CHUNK;
        size_t off = done % PATTERN_PERIOD;
        if (opt_up) {
            if (write_full(fd, pattern + off, want) < 0) { __sync_fetch_and_add(&errors, 1); break; }
            done += want;
        } else {
            ssize_t r = recv(fd, buf, want, 0);
            if (r <= 0 || memcmp(buf, pattern + off, (size_t)r) != 0) { __sync_fetch_and_add(&errors, 1); break; }
            done += (uint64_t)r;
        }
    }
    if (opt_up) {
        unsigned char k = 0;
        if (read_full(fd, &k, 1) < 0 || k != 'K') __sync_fetch_and_add(&errors, 1);
    }
    free(buf);
    close(fd);
    return NULL;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static volatile int stop_flag = 0;
static uint64_t sessions_done = 0;

static void *session_worker(void *arg) {
    (void)arg;
    while (!stop_flag) {
        int fd = open_tunnel();
        if (fd < 0) {
            /* A refusing server must not turn this into a busy loop. */
            if (__sync_add_and_fetch(&errors, 1) > 100) stop_flag = 1;
            usleep(1000);
            continue;
        }
        unsigned char msg[2] = {'E', 'x'}, back = 0;
        if (write_full(fd, msg, 2) < 0 || read_full(fd, &back, 1) < 0 || back != 'x')
            __sync_fetch_and_add(&errors, 1);
        else
            __sync_fetch_and_add(&sessions_done, 1);
        close(fd);
    }
    return NULL;
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    make_pattern();
    if (argc < 2) { fprintf(stderr, "usage: see the source\n"); return 2; }
    if (!strcmp(argv[1], "serve")) return serve(argc > 2 ? atoi(argv[2]) : 0);
    const char *mode = argv[1];
    for (int i = 2; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
        if (!strcmp(k, "--proxy")) { parse_addr(v, &proxy); use_proxy = 1; i++; }
        else if (!strcmp(k, "--target")) { parse_addr(v, &target); i++; }
        else if (!strcmp(k, "--streams")) { opt_streams = atoi(v); i++; }
        else if (!strcmp(k, "--bytes")) { opt_bytes = strtoull(v, NULL, 10); i++; }
        else if (!strcmp(k, "--dir")) { opt_up = !strcmp(v, "up"); i++; }
        else if (!strcmp(k, "--size")) { opt_size = atoi(v); i++; }
        else if (!strcmp(k, "--count")) { opt_count = atoi(v); i++; }
        else if (!strcmp(k, "--concurrency")) { opt_conc = atoi(v); i++; }
        else if (!strcmp(k, "--seconds")) { opt_seconds = atof(v); i++; }
        else { fprintf(stderr, "unknown option %s\n", k); return 2; }
    }
    if (!strcmp(mode, "throughput")) {
        pthread_t t[256];
        if (opt_streams > 256) opt_streams = 256;
        double start = now();
        for (int i = 0; i < opt_streams; i++) pthread_create(&t[i], NULL, stream_worker, NULL);
        for (int i = 0; i < opt_streams; i++) pthread_join(t[i], NULL);
        double secs = now() - start;
        double total = (double)opt_bytes * opt_streams;
        printf("{\"mb_per_s\": %.1f, \"seconds\": %.3f, \"errors\": %d}\n", total / secs / 1e6, secs, errors);
    } else if (!strcmp(mode, "latency")) {
        int fd = open_tunnel();
        if (fd < 0) die("tunnel");
        unsigned char hdr[5] = {'P'}; uint32_t size = (uint32_t)opt_size; memcpy(hdr + 1, &size, 4);
        write_full(fd, hdr, 5);
        unsigned char *buf = malloc(opt_size), *back = malloc(opt_size);
        for (int i = 0; i < opt_size; i++) buf[i] = pattern[i];
        double *rtt = malloc(sizeof(double) * opt_count);
        for (int i = 0; i < opt_count; i++) {
            double t0 = now();
            if (write_full(fd, buf, opt_size) < 0 || read_full(fd, back, opt_size) < 0 ||
                memcmp(buf, back, opt_size) != 0) { errors++; break; }
            rtt[i] = (now() - t0) * 1e6;
        }
        close(fd);
        qsort(rtt, opt_count, sizeof(double), cmp_double);
        printf("{\"p50_us\": %.1f, \"p99_us\": %.1f, \"errors\": %d}\n",
               rtt[opt_count / 2], rtt[(int)(opt_count * 0.99)], errors);
    } else if (!strcmp(mode, "sessions")) {
        pthread_t t[512];
        if (opt_conc > 512) opt_conc = 512;
        double start = now();
        for (int i = 0; i < opt_conc; i++) pthread_create(&t[i], NULL, session_worker, NULL);
        while (now() - start < opt_seconds) usleep(10000);
        stop_flag = 1;
        for (int i = 0; i < opt_conc; i++) pthread_join(t[i], NULL);
        double secs = now() - start;
        printf("{\"sessions_per_s\": %.1f, \"sessions\": %ld, \"errors\": %d}\n",
               sessions_done / secs, (long)sessions_done, errors);
    } else if (!strcmp(mode, "idle")) {
        int *fds = malloc(sizeof(int) * opt_count), opened = 0;
        for (int i = 0; i < opt_count; i++) {
            int fd = open_tunnel();
            if (fd < 0) { errors++; continue; }
            unsigned char hdr[5] = {'P', 1, 0, 0, 0}, b = 'i';
            if (write_full(fd, hdr, 5) < 0 || write_full(fd, &b, 1) < 0 || read_full(fd, &b, 1) < 0) { errors++; close(fd); continue; }
            fds[opened++] = fd;
        }
        printf("{\"opened\": %d, \"errors\": %d}\n", opened, errors); fflush(stdout);
        char c; while (read(0, &c, 1) > 0) {}
        for (int i = 0; i < opened; i++) close(fds[i]);
    } else { fprintf(stderr, "unknown mode %s\n", mode); return 2; }
    return errors ? 1 : 0;
}
