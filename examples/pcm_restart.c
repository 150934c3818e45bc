/*
 * pcm_restart: restart a playback stream after a stop that left a period half written.
 *
 * Reproduces Linux virtio_snd bug (a) (see README "Debugging the driver"): the driver only
 * queues an I/O message once msg->length reaches period_bytes, and prepare() does not reset
 * msg->length, so the message that was half filled before the stop is never queued again.
 *
 * Talks to the kernel with raw ALSA PCM ioctls (no libasound), so one static binary runs in
 * any guest:
 *   run 1: PREPARE, write a whole buffer (the stream starts), one more period, then half a
 *          period (with -F: a whole one instead, the control run); DROP (the driver sends
 *          PCM_STOP and PCM_RELEASE), or with -e DRAIN (blocking; times out with EIO when
 *          the half period never plays);
 *   run 2: PREPARE, write whole periods until WRITE periods are written or nothing moves for
 *          STALL_MS milliseconds.
 * Every period carries its own sample value (its number, 1, 2, ...), so a WAV written by the
 * device shows which periods reached it. Prints what it did and the kernel's view of the
 * stream (/proc/asound/cardC/pcmDp/sub0/status) at each step.
 *
 * Build: gcc -static -O2 -Wall -o pcm_restart pcm_restart.c
 * Usage: pcm_restart [-F] [-e] [-D /dev/snd/pcmC0D0p] [-p PERIOD_FRAMES] [-n PERIODS] [-w WRITE] [-s STALL_MS]
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>
#include <sound/asound.h>

#define RATE 48000
#define CHANNELS 2
#define FRAME_BYTES (CHANNELS * 2) /* S16_LE */

static const char *device = "/dev/snd/pcmC0D0p";
static const char *status_path = "/proc/asound/card0/pcm0p/sub0/status";
static unsigned period = 4800, periods = 4, write_periods = 40, stall_ms = 2000;
static int16_t *chunk; /* one period of frames */
static unsigned next_value = 1;
static int full_last; /* -F: the last piece of run 1 is a whole period */
static int drain; /* -e: run 1 ends with DRAIN instead of DROP */

static struct snd_mask *mask(struct snd_pcm_hw_params *p, int n)
{
	return &p->masks[n - SNDRV_PCM_HW_PARAM_FIRST_MASK];
}

static struct snd_interval *interval(struct snd_pcm_hw_params *p, int n)
{
	return &p->intervals[n - SNDRV_PCM_HW_PARAM_FIRST_INTERVAL];
}

static void set_mask(struct snd_pcm_hw_params *p, int n, unsigned bit)
{
	struct snd_mask *m = mask(p, n);

	memset(m, 0, sizeof(*m));
	m->bits[bit / 32] = 1u << (bit % 32);
}

static void set_interval(struct snd_pcm_hw_params *p, int n, unsigned value)
{
	struct snd_interval *i = interval(p, n);

	i->min = i->max = value;
	i->integer = 1;
}

static void die(const char *what)
{
	printf("pcm_restart: %s: %s\n", what, strerror(errno));
	exit(1);
}

/* The kernel's view: state, hw_ptr, appl_ptr (from procfs, one line). */
static void show(const char *when)
{
	char text[2048], state[32] = "?";
	long hw = -1, appl = -1;
	FILE *f = fopen(status_path, "r");
	size_t n = f ? fread(text, 1, sizeof(text) - 1, f) : 0;
	char *s;

	if (f)
		fclose(f);
	text[n] = 0;
	if ((s = strstr(text, "state: ")))
		sscanf(s, "state: %31s", state);
	if ((s = strstr(text, "hw_ptr")))
		sscanf(s, "hw_ptr : %ld", &hw);
	if ((s = strstr(text, "appl_ptr")))
		sscanf(s, "appl_ptr : %ld", &appl);
	printf("%s: state %s hw_ptr %ld appl_ptr %ld\n", when, state, hw, appl);
	fflush(stdout);
}

static void set_params(int fd)
{
	struct snd_pcm_hw_params p;
	struct snd_pcm_sw_params sw;
	unsigned i;

	memset(&p, 0, sizeof(p));
	for (i = SNDRV_PCM_HW_PARAM_FIRST_MASK; i <= SNDRV_PCM_HW_PARAM_LAST_MASK; i++)
		memset(mask(&p, i), 0xff, sizeof(struct snd_mask));
	for (i = SNDRV_PCM_HW_PARAM_FIRST_INTERVAL; i <= SNDRV_PCM_HW_PARAM_LAST_INTERVAL; i++)
		interval(&p, i)->max = ~0u;
	p.rmask = ~0u;
	p.info = ~0u;
	set_mask(&p, SNDRV_PCM_HW_PARAM_ACCESS, SNDRV_PCM_ACCESS_RW_INTERLEAVED);
	set_mask(&p, SNDRV_PCM_HW_PARAM_FORMAT, SNDRV_PCM_FORMAT_S16_LE);
	set_mask(&p, SNDRV_PCM_HW_PARAM_SUBFORMAT, SNDRV_PCM_SUBFORMAT_STD);
	set_interval(&p, SNDRV_PCM_HW_PARAM_CHANNELS, CHANNELS);
	set_interval(&p, SNDRV_PCM_HW_PARAM_RATE, RATE);
	set_interval(&p, SNDRV_PCM_HW_PARAM_PERIOD_SIZE, period);
	set_interval(&p, SNDRV_PCM_HW_PARAM_PERIODS, periods);
	if (ioctl(fd, SNDRV_PCM_IOCTL_HW_PARAMS, &p) < 0)
		die("HW_PARAMS");
	/* start when the whole buffer is written (not at the first frame), stop on an underrun */
	memset(&sw, 0, sizeof(sw));
	sw.avail_min = period;
	sw.start_threshold = sw.stop_threshold = period * periods;
	sw.proto = SNDRV_PCM_VERSION;
	if (ioctl(fd, SNDRV_PCM_IOCTL_SW_PARAMS, &sw) < 0)
		die("SW_PARAMS");
	printf("params: %u Hz S16_LE %u ch, period %u frames (%u bytes), buffer %u periods (%u bytes)\n",
	       RATE, CHANNELS, period, period * FRAME_BYTES, periods, period * periods * FRAME_BYTES);
}

/*
 * Write `frames` frames (at most one period) valued `value`; waits with poll() while the buffer
 * is full. Returns the frames written: fewer if nothing moved for stall_ms, -1 on an xrun.
 */
static long write_frames(int fd, unsigned frames, unsigned value)
{
	unsigned done = 0, i;

	for (i = 0; i < frames * CHANNELS; i++)
		chunk[i] = (int16_t)value;
	while (done < frames) {
		struct snd_xferi x = { .buf = chunk + done * CHANNELS, .frames = frames - done };
		struct pollfd pfd = { .fd = fd, .events = POLLOUT };
		int ready;

		if (ioctl(fd, SNDRV_PCM_IOCTL_WRITEI_FRAMES, &x) == 0) {
			done += x.result;
			continue;
		}
		if (errno == EPIPE)
			return -1;
		if (errno != EAGAIN)
			die("WRITEI_FRAMES");
		ready = poll(&pfd, 1, stall_ms);
		if (ready < 0)
			die("poll");
		if (ready == 0)
			break;
	}
	return done;
}

/* Whole periods; returns how many were written before a stall or an xrun (reported). */
static unsigned write_periods_until_stall(int fd, const char *run, unsigned count)
{
	unsigned n;

	for (n = 0; n < count; n++) {
		long done = write_frames(fd, period, next_value++);

		if (done < 0) {
			printf("%s: xrun (EPIPE) after %u whole periods\n", run, n);
			return n;
		}
		if (done < (long)period) {
			printf("%s: wrote %u whole periods, then nothing moved for %u ms\n", run, n, stall_ms);
			show(run);
			return n;
		}
	}
	return n;
}

static void sleep_ms(unsigned ms)
{
	struct timespec t = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&t, NULL);
}

int main(int argc, char **argv)
{
	int opt, fd;
	unsigned n, last;

	while ((opt = getopt(argc, argv, "FeD:p:n:w:s:")) != -1) {
		switch (opt) {
		case 'F': full_last = 1; break;
		case 'e': drain = 1; break;
		case 'D': device = optarg; break;
		case 'p': period = strtoul(optarg, NULL, 0); break;
		case 'n': periods = strtoul(optarg, NULL, 0); break;
		case 'w': write_periods = strtoul(optarg, NULL, 0); break;
		case 's': stall_ms = strtoul(optarg, NULL, 0); break;
		default:
			fprintf(stderr, "usage: %s [-F] [-e] [-D DEV] [-p PERIOD_FRAMES] [-n PERIODS] [-w WRITE] [-s STALL_MS]\n",
				argv[0]);
			return 2;
		}
	}
	if (!period || periods < 2 || period > 1 << 20 || periods > 1024)
		return 2;
	chunk = calloc(period, FRAME_BYTES);
	fd = open(device, O_RDWR | O_NONBLOCK);
	if (fd < 0 || !chunk)
		die(device);
	set_params(fd);

	/* Run 1: a whole buffer (the stream starts), one more period, half a period. */
	if (ioctl(fd, SNDRV_PCM_IOCTL_PREPARE) < 0)
		die("PREPARE");
	n = write_periods_until_stall(fd, "run 1", periods + 1);
	if (n != periods + 1)
		return 1;
	last = full_last ? period : period / 2;
	if (write_frames(fd, last, next_value++) != last) {
		printf("run 1: the last %u frames could not be written\n", last);
		return 1;
	}
	if (full_last)
		printf("run 1: wrote %u whole periods\n", n + 1);
	else
		printf("run 1: wrote %u whole periods and half a period (%u frames)\n", n, last);
	show("run 1");
	if (drain) {
		struct timespec a, b;
		int rc, err;

		fcntl(fd, F_SETFL, 0); /* a blocking DRAIN waits until played (or ALSA's timeout) */
		clock_gettime(CLOCK_MONOTONIC, &a);
		rc = ioctl(fd, SNDRV_PCM_IOCTL_DRAIN);
		err = errno;
		clock_gettime(CLOCK_MONOTONIC, &b);
		fcntl(fd, F_SETFL, O_NONBLOCK);
		printf("run 1: DRAIN returned %s after %.1f s\n", rc < 0 ? strerror(err) : "0",
		       (double)(b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
		show("run 1: drained");
	} else {
		if (ioctl(fd, SNDRV_PCM_IOCTL_DROP) < 0)
			die("DROP");
		show("run 1: dropped");
	}

	/* Run 2: the application restarts, writing whole periods only. */
	sleep_ms(100);
	if (ioctl(fd, SNDRV_PCM_IOCTL_PREPARE) < 0)
		die("PREPARE");
	show("run 2: prepared");
	n = write_periods_until_stall(fd, "run 2", write_periods);
	if (n == write_periods) {
		printf("run 2: wrote all %u periods\n", n);
		show("run 2");
	}
	printf("pcm_restart: done (%s)\n", n == write_periods ? "no stall" : "stalled");
	close(fd);
	return 0;
}
