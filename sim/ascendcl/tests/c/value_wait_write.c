/*
 * Stream memory operations, in the flow of the official sample "multistream sync memory": one thread
 * queues aclrtValueWait(EQ 100) on stream A and synchronises it; another, a moment later, writes a flag
 * file's stand-in (a host variable) and then queues aclrtValueWrite(100) on stream B. Stream A must not
 * finish before the write: the waiting thread checks the host variable was set. Refusals: a flag other
 * than 0 for the write, an unknown wait mode, host memory.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include "common.h"

static void *dev_ptr;
static aclrtStream stream_a, stream_b;
static atomic_int written;

static void *waiter(void *arg) {
    (void)arg;
    CHECK(aclrtSetDevice(0));
    CHECK(aclrtValueWait(dev_ptr, 100, ACL_STREAM_WAIT_VALUE_EQ, stream_a));
    CHECK(aclrtSynchronizeStream(stream_a));
    if (atomic_load(&written) != 123) {
        fprintf(stderr, "stream A finished before stream B wrote the value\n");
        exit(1);
    }
    return NULL;
}

static void *writer(void *arg) {
    (void)arg;
    CHECK(aclrtSetDevice(0));
    atomic_store(&written, 123);
    CHECK(aclrtValueWrite(dev_ptr, 100, 0, stream_b));
    CHECK(aclrtSynchronizeStream(stream_b));
    return NULL;
}

int main(void) {
    pthread_t a, b;
    uint64_t host = 0;
    CHECK(aclInit(NULL));
    CHECK(aclrtSetDevice(0));
    CHECK(aclrtMalloc(&dev_ptr, 1 << 20, ACL_MEM_MALLOC_HUGE_FIRST));
    CHECK(aclrtMemset(dev_ptr, 1 << 20, 0, 8));
    CHECK(aclrtCreateStream(&stream_a));
    CHECK(aclrtCreateStream(&stream_b));
    EXPECT(aclrtValueWrite(dev_ptr, 1, 1, stream_b), ACL_ERROR_RT_PARAM_INVALID);
    EXPECT(aclrtValueWait(dev_ptr, 1, 4, stream_a), ACL_ERROR_RT_PARAM_INVALID);
    EXPECT(aclrtValueWrite(&host, 1, 0, stream_b), ACL_ERROR_RT_PARAM_INVALID);
    EXPECT(aclrtValueWrite(NULL, 1, 0, stream_b), ACL_ERROR_INVALID_PARAM);
    if (pthread_create(&a, NULL, waiter, NULL) != 0) {
        perror("pthread_create");
        return 1;
    }
    struct timespec pause = {0, 200 * 1000 * 1000};
    nanosleep(&pause, NULL);
    if (pthread_create(&b, NULL, writer, NULL) != 0) {
        perror("pthread_create");
        return 1;
    }
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    uint64_t value = 0;
    CHECK(aclrtMemcpy(&value, sizeof value, dev_ptr, sizeof value, ACL_MEMCPY_DEVICE_TO_HOST));
    if (value != 100) {
        fprintf(stderr, "device memory holds %llu, not 100\n", (unsigned long long)value);
        return 1;
    }
    CHECK(aclrtDestroyStreamForce(stream_a));
    CHECK(aclrtDestroyStreamForce(stream_b));
    CHECK(aclrtFree(dev_ptr));
    CHECK(aclrtResetDeviceForce(0));
    CHECK(aclFinalize());
    printf("value_wait_write: ok\n");
    return 0;
}
