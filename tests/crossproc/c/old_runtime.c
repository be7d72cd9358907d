/*
 * A stand-in for an old libascendcl.so: it exports only the entry points every ACL runtime has, so
 * aclshm must load it, use what is there, and report the rest as unsupported. With -DNO_SET_DEVICE it
 * also lacks one of those, and aclshm must refuse it.
 */
#include <stddef.h>
#include <stdint.h>

int aclInit(const char *config) { (void)config; return 0; }
int aclFinalize(void) { return 0; }
#ifndef NO_SET_DEVICE
int aclrtSetDevice(int32_t device) { return device == 0 ? 0 : 107001; }
#endif
int aclrtGetDeviceCount(uint32_t *count) {
    if (count == NULL) return 100000;
    *count = 1;
    return 0;
}
