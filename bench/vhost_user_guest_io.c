/* Direct-I/O load generator run inside the benchmark guest.
 *
 * usage: vhost_user_guest_io DEVICE read|randread|write BLOCK_SIZE COUNT
 * Prints "ops=N bytes=B ns=T". Queue depth 1, O_DIRECT, so every operation is
 * one virtio-blk request.  Writes are not followed by a flush: the two
 * back-ends advertise different cache modes (see docs/vhost-user.md), and a
 * flush would measure the host disk instead of the export.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s DEVICE read|randread|write BLOCK_SIZE COUNT\n", argv[0]);
        return 2;
    }
    const char *mode = argv[2];
    size_t bs = strtoul(argv[3], NULL, 0);
    long count = strtol(argv[4], NULL, 0);
    int writing = strcmp(mode, "write") == 0;
    int fd = open(argv[1], (writing ? O_WRONLY : O_RDONLY) | O_DIRECT);
    if (fd < 0) {
        perror("open");
        return 1;
    }
    off_t size = lseek(fd, 0, SEEK_END);
    long blocks = size / bs;
    void *buf;
    if (posix_memalign(&buf, 4096, bs)) {
        return 1;
    }
    memset(buf, 0x5a, bs);
    unsigned int seed = 12345;
    long long start = now_ns();
    for (long i = 0; i < count; i++) {
        long block = strcmp(mode, "randread") == 0 ? rand_r(&seed) % blocks : i % blocks;
        ssize_t n = writing ? pwrite(fd, buf, bs, block * bs) : pread(fd, buf, bs, block * bs);
        if (n != (ssize_t)bs) {
            perror("io");
            return 1;
        }
    }
    long long ns = now_ns() - start;
    printf("ops=%ld bytes=%lld ns=%lld\n", count, (long long)count * bs, ns);
    return 0;
}
