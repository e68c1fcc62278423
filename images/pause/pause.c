/*
 * The pod sandbox's process: holds the pod's namespaces, reaps orphaned
 * children (it is PID 1 of the pod when the PID namespace is shared) and
 * exits on SIGINT or SIGTERM. Built static (gcc -static -Os) into the pause
 * image that images/build writes for the test node's containerd.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig)
{
	(void)sig;
	_exit(0);
}

static void reap(int sig)
{
	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
}

int main(int argc, char **argv)
{
	struct sigaction sa;

	if (argc > 1 && strcmp(argv[1], "-v") == 0) {
		printf("mock-device pause 1.0\n");
		return 0;
	}
	if (getpid() != 1)
		fprintf(stderr, "pause: not PID 1: orphans will not be reaped here\n");
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = stop;
	if (sigaction(SIGINT, &sa, NULL) < 0 || sigaction(SIGTERM, &sa, NULL) < 0)
		return 1;
	sa.sa_handler = reap;
	sa.sa_flags = SA_NOCLDSTOP;
	if (sigaction(SIGCHLD, &sa, NULL) < 0)
		return 2;
	for (;;)
		pause();
}
