/*
 * Traffic source for bench_dataplane.py: sends prepared Ethernet frames as fast as it can.
 *
 * Usage: trafficgen IFNAME FRAMES_FILE SECONDS [PORT_OFFSET [MAX_PACKETS]]
 * FRAMES_FILE holds frames as (2-byte big-endian length, bytes). They are sent in turn,
 * 64 per sendmmsg() on an AF_PACKET socket that bypasses the qdisc, so the per-packet
 * cost of the source is a few hundred nanoseconds and the router's path dominates.
 * With PORT_OFFSET, every packet is a new connection: the UDP source port of an IPv4
 * frame becomes PORT_OFFSET plus the number of passes over the file so far (mod 65536),
 * so a (frame, port) pair repeats only after 65,536 passes; two senders with offsets
 * 32,768 apart stay apart for 32,768 passes. UDP checksums are 0, so nothing else changes.
 * MAX_PACKETS stops it earlier, after about that many frames (whole batches).
 * Prints the number of frames sent.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define BATCH 64
#define MAX_FRAMES 65536

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 4 || argc > 6) {
        fprintf(stderr, "usage: %s IFNAME FRAMES_FILE SECONDS [PORT_OFFSET [MAX_PACKETS]]\n", argv[0]);
        return 2;
    }
    FILE *file = fopen(argv[2], "rb");
    if (!file) { perror("frames file"); return 1; }
    static unsigned char *frames[MAX_FRAMES];
    static size_t lengths[MAX_FRAMES];
    size_t count = 0;
    unsigned char header[2];
    while (count < MAX_FRAMES && fread(header, 1, 2, file) == 2) {
        lengths[count] = (size_t)header[0] << 8 | header[1];
        frames[count] = malloc(lengths[count]);
        if (!frames[count] || fread(frames[count], 1, lengths[count], file) != lengths[count]) {
            fprintf(stderr, "truncated frames file\n");
            return 1;
        }
        count++;
    }
    fclose(file);
    if (count == 0) { fprintf(stderr, "no frames\n"); return 1; }

    int sock = socket(AF_PACKET, SOCK_RAW, 0);
    if (sock < 0) { perror("socket"); return 1; }
    int one = 1;
    setsockopt(sock, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one);
    struct sockaddr_ll address = {0};
    address.sll_family = AF_PACKET;
    address.sll_ifindex = (int)if_nametoindex(argv[1]);
    if (address.sll_ifindex == 0) { perror("interface"); return 1; }
    if (bind(sock, (struct sockaddr *)&address, sizeof address) < 0) { perror("bind"); return 1; }

    struct mmsghdr messages[BATCH];
    struct iovec vectors[BATCH];
    double end = now() + atof(argv[3]);
    int unique = argc >= 5;
    unsigned long long most = argc == 6 ? strtoull(argv[5], NULL, 10) : ~0ULL;
    unsigned int port = unique ? (unsigned int)atoi(argv[4]) : 0;
    unsigned long long sent = 0;
    size_t next = 0;
    while (sent < most && now() < end) {
        for (int i = 0; i < BATCH; i++) {
            if (unique && lengths[next] >= 14 + 20 + 8) {
                /* Ethernet 14 bytes, IPv4 header of 20 (IHL 5): the UDP source port at 34 */
                frames[next][34] = (unsigned char)(port >> 8);
                frames[next][35] = (unsigned char)port;
            }
            vectors[i].iov_base = frames[next];
            vectors[i].iov_len = lengths[next];
            memset(&messages[i], 0, sizeof messages[i]);
            messages[i].msg_hdr.msg_iov = &vectors[i];
            messages[i].msg_hdr.msg_iovlen = 1;
            next = (next + 1) % count;
            if (next == 0) port = (port + 1) & 0xFFFF;
        }
        int done = sendmmsg(sock, messages, BATCH, 0);
        if (done > 0) sent += (unsigned long long)done;
    }
    printf("%llu\n", sent);
    return 0;
}
