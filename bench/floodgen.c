/* SPDX-License-Identifier: GPL-2.0 */
/* DISCOVER flood for bench/flood.py: live frames from random client MACs on an AF_PACKET
 * socket, sendmmsg batches of BATCH, paced to a target rate (0: as fast as it can).
 *
 * A share of the frames (relay_permille / 1000) is relayed: sent by one relay agent (the
 * interface's own MAC as L2 source, giaddr and IP source RELAY_IP, UDP 67 -> 67, hops 1)
 * to the server's MAC and address; the rest are direct: broadcast from the random MAC
 * itself, 0.0.0.0:68 -> 255.255.255.255:67. Either way chaddr and xid are random per frame.
 * Random MACs are locally administered unicast with first octet 0x0a, so the harness can
 * tell their replies from those of the clients it measures.
 *
 * The IPv4 header checksum is computed once per template (it covers no per-frame field),
 * the UDP checksum per frame, as a real client's stack does: a receiver that checks it
 * must not see the flood as malformed.
 *
 *   floodgen IFNAME SERVER_MAC SERVER_IP RELAY_IP RATE SECONDS RELAY_PERMILLE SEED
 *
 * Prints one line when done: sent=N direct=N relayed=N errors=N seconds=S
 */
#define _GNU_SOURCE /* sendmmsg */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define BOOTP_LEN 300 /* what dhclient and udhcpc send: options padded to 300 bytes */
#define FRAME_LEN (14 + 20 + 8 + BOOTP_LEN)
#define OFF_ETH_DST 0
#define OFF_ETH_SRC 6
#define OFF_IP 14
#define OFF_BOOTP (14 + 20 + 8)
#define OFF_XID (OFF_BOOTP + 4)
#define OFF_CHADDR (OFF_BOOTP + 28)

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static uint64_t rng;

static uint64_t next_random(void)
{
	/* xorshift64*: fast, and the flood only needs MACs that do not repeat in practice */
	rng ^= rng >> 12;
	rng ^= rng << 25;
	rng ^= rng >> 27;
	return rng * 0x2545F4914F6CDD1DULL;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint32_t sum16(const uint8_t *p, int len, uint32_t sum)
{
	for (int i = 0; i < len; i += 2)
		sum += (p[i] << 8) | p[i + 1];
	return sum;
}

static uint16_t fold(uint32_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

/* UDP checksum of a frame built below: pseudo-header (addresses, protocol, length), then
 * the UDP header and data, the checksum field zeroed first; 0 is sent as 0xffff. */
static void udp_checksum(uint8_t *f)
{
	uint8_t *ip = f + OFF_IP, *udp = ip + 20;
	uint16_t csum;

	udp[6] = udp[7] = 0;
	csum = fold(sum16(udp, 8 + BOOTP_LEN, sum16(ip + 12, 8, 17 + 8 + BOOTP_LEN)));
	if (!csum)
		csum = 0xffff;
	udp[6] = csum >> 8;
	udp[7] = csum & 0xff;
}

/* One DISCOVER frame; per-frame fields (MACs, xid) are filled in before each send. */
static void build(uint8_t *f, const uint8_t *dst_mac, const uint8_t *src_mac, uint32_t src_ip,
		  uint32_t dst_ip, uint16_t sport, uint32_t giaddr)
{
	uint8_t *ip = f + OFF_IP, *udp = ip + 20, *b = f + OFF_BOOTP, *o;

	memset(f, 0, FRAME_LEN);
	memcpy(f + OFF_ETH_DST, dst_mac, 6);
	memcpy(f + OFF_ETH_SRC, src_mac, 6);
	f[12] = 0x08;
	ip[0] = 0x45;
	ip[2] = (20 + 8 + BOOTP_LEN) >> 8;
	ip[3] = (20 + 8 + BOOTP_LEN) & 0xff;
	ip[8] = 64;
	ip[9] = 17;
	memcpy(ip + 12, &src_ip, 4);
	memcpy(ip + 16, &dst_ip, 4);
	uint16_t csum = htons(fold(sum16(ip, 20, 0)));
	memcpy(ip + 10, &csum, 2);
	udp[0] = sport >> 8;
	udp[1] = sport & 0xff;
	udp[3] = 67;
	udp[4] = (8 + BOOTP_LEN) >> 8;
	udp[5] = (8 + BOOTP_LEN) & 0xff;
	b[0] = 1; /* BOOTREQUEST */
	b[1] = 1;
	b[2] = 6;
	b[3] = giaddr ? 1 : 0; /* hops */
	memcpy(b + 24, &giaddr, 4);
	o = b + 236;
	*o++ = 99, *o++ = 130, *o++ = 83, *o++ = 99;
	*o++ = 53, *o++ = 1, *o++ = 1;                                  /* DISCOVER */
	*o++ = 55, *o++ = 4, *o++ = 1, *o++ = 3, *o++ = 6, *o++ = 51; /* PRL */
	*o++ = 255;
}

static int parse_mac(const char *s, uint8_t *mac)
{
	return sscanf(s, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &mac[0], &mac[1], &mac[2], &mac[3],
		      &mac[4], &mac[5]) == 6 ? 0 : -1;
}

int main(int argc, char **argv)
{
	uint8_t server_mac[6], own_mac[6], bcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
	uint8_t direct_tpl[FRAME_LEN], relay_tpl[FRAME_LEN], frames[BATCH][FRAME_LEN];
	struct mmsghdr msgs[BATCH];
	struct iovec iov[BATCH];
	struct sockaddr_ll addr = {0};
	struct ifreq ifr = {0};
	uint32_t server_ip, relay_ip;
	unsigned long long sent = 0, direct = 0, relayed = 0, errors = 0;
	int one = 1;

	if (argc != 9 || parse_mac(argv[2], server_mac) < 0 ||
	    inet_pton(AF_INET, argv[3], &server_ip) != 1 ||
	    inet_pton(AF_INET, argv[4], &relay_ip) != 1) {
		fprintf(stderr, "usage: %s IFNAME SERVER_MAC SERVER_IP RELAY_IP RATE SECONDS "
				"RELAY_PERMILLE SEED\n", argv[0]);
		return 2;
	}
	double rate = atof(argv[5]), seconds = atof(argv[6]);
	unsigned permille = (unsigned)atoi(argv[7]);
	rng = strtoull(argv[8], NULL, 10) * 2654435761ULL + 1;

	int fd = socket(AF_PACKET, SOCK_RAW, 0); /* protocol 0: send only, never receives */
	if (fd < 0) {
		perror("socket");
		return 1;
	}
	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", argv[1]);
	if (ioctl(fd, SIOCGIFINDEX, &ifr) < 0) {
		perror("SIOCGIFINDEX");
		return 1;
	}
	addr.sll_ifindex = ifr.ifr_ifindex;
	if (ioctl(fd, SIOCGIFHWADDR, &ifr) < 0) {
		perror("SIOCGIFHWADDR");
		return 1;
	}
	memcpy(own_mac, ifr.ifr_hwaddr.sa_data, 6);
	addr.sll_family = AF_PACKET;
	addr.sll_protocol = htons(ETH_P_IP);
	addr.sll_halen = 6;
	if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		perror("bind");
		return 1;
	}
	/* The flood need not queue behind anything: straight to the driver. */
	setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one));

	build(direct_tpl, bcast, own_mac, 0, 0xffffffff, 68, 0);
	build(relay_tpl, server_mac, own_mac, relay_ip, server_ip, 67, relay_ip);
	for (int i = 0; i < BATCH; i++) {
		iov[i].iov_base = frames[i];
		iov[i].iov_len = FRAME_LEN;
		memset(&msgs[i], 0, sizeof(msgs[i]));
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);

	double start = now_s(), end = start + seconds, t = start;
	while (!stop && t < end) {
		int relay_flags[BATCH];

		for (int i = 0; i < BATCH; i++) {
			uint64_t r = next_random();
			uint8_t mac[6] = {0x0a, r >> 8, r >> 16, r >> 24, r >> 32, r >> 40};
			uint32_t xid = (uint32_t)(r >> 32) ^ (uint32_t)r;

			relay_flags[i] = (r & 0x3ff) * 1000 / 1024 < permille;
			memcpy(frames[i], relay_flags[i] ? relay_tpl : direct_tpl, FRAME_LEN);
			if (!relay_flags[i])
				memcpy(frames[i] + OFF_ETH_SRC, mac, 6);
			memcpy(frames[i] + OFF_CHADDR, mac, 6);
			memcpy(frames[i] + OFF_XID, &xid, 4);
			udp_checksum(frames[i]);
		}
		int n = sendmmsg(fd, msgs, BATCH, 0);
		if (n < 0) {
			if (errno != ENOBUFS && errno != EAGAIN && errno != EINTR) {
				perror("sendmmsg");
				return 1;
			}
			n = 0;
		}
		for (int i = 0; i < n; i++)
			relay_flags[i] ? relayed++ : direct++;
		errors += BATCH - n;
		sent += n;
		t = now_s();
		if (rate > 0) {
			double due = start + sent / rate; /* when the next batch is due */

			if (due >= end)
				break;
			if (due > t) {
				struct timespec ts = {(time_t)(due - t), (long)((due - t - (time_t)(due - t)) * 1e9)};

				nanosleep(&ts, NULL);
				t = now_s();
			}
		}
	}
	printf("sent=%llu direct=%llu relayed=%llu errors=%llu seconds=%.3f\n", sent, direct,
	       relayed, errors, now_s() - start);
	return 0;
}
