/*
 * The pod sandbox's process for the real node (REAL_NODE=1): it holds the pod's namespaces
 * open and does nothing else. As PID 1 of a pod that shares its process namespace it also
 * reaps orphaned children. SIGTERM or SIGINT ends it with status 0.
 *
 * Built static by tests/cluster/node-images.sh (gcc -static), so its image is one file.
 */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void quit(int sig) {
  (void)sig;
  _exit(0);
}

static void reap(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  struct sigaction sa = {0};
  sigemptyset(&sa.sa_mask);
  sa.sa_handler = quit;
  if (sigaction(SIGTERM, &sa, NULL) != 0 || sigaction(SIGINT, &sa, NULL) != 0) {
    return 1;
  }
  sa.sa_handler = reap;
  sa.sa_flags = SA_NOCLDSTOP | SA_RESTART;
  if (sigaction(SIGCHLD, &sa, NULL) != 0) {
    return 1;
  }
  for (;;) {
    pause();
  }
}
