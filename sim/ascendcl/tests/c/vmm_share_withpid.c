/*
 * Physical memory shared between two processes with a pid whitelist, as in the official sample
 * "physical memory sharing with pid": A allocates and maps memory on device 0, writes it, exports it
 * with validation on, whitelists B's pid and sends the shareable handle; B imports it on device 1, maps
 * it, reads it and writes back; A checks B's write. Tear-down in the documented order.
 */
#include "common.h"

#define SIZE (2u << 20)

static void fill(unsigned char *buf, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++) buf[i] = (unsigned char)(i * 31u + seed);
}

int main(void) {
    channel a, b;
    pid_t child = start_pair(&a, &b);
    static unsigned char host[SIZE], back[SIZE];

    aclrtPhysicalMemProp prop = device_prop(0, ACL_HBM_MEM_NORMAL);

    if (child == 0) {
        /* Process B, on device 1. */
        int32_t pid = 0;
        uint64_t shareable = 0;
        CHECK(aclInit(NULL));
        CHECK(aclrtSetDevice(1));
        CHECK(aclrtDeviceGetBareTgid(&pid));
        send_bytes(&b, &pid, sizeof pid);
        recv_bytes(&b, &shareable, sizeof shareable);

        aclrtDrvMemHandle handle = NULL;
        void *va = NULL;
        CHECK(aclrtMemImportFromShareableHandle(shareable, 1, &handle));
        EXPECT(aclrtMemImportFromShareableHandle(shareable, 1, &handle), ACL_ERROR_RT_DRV_INTERNAL_ERROR);
        CHECK(aclrtReserveMemAddress(&va, SIZE, 0, NULL, 0));
        CHECK(aclrtMapMem(va, SIZE, 0, handle, 0));
        aclrtMemAccessDesc desc;
        memset(&desc, 0, sizeof desc);
        desc.flags = ACL_RT_MEM_ACCESS_FLAGS_READWRITE;
        desc.location.type = ACL_MEM_LOCATION_TYPE_DEVICE;
        desc.location.id = 1;
        CHECK(aclrtMemSetAccess(va, SIZE, &desc, 1));
        CHECK(aclrtMemcpy(back, SIZE, va, SIZE, ACL_MEMCPY_DEVICE_TO_HOST));
        fill(host, SIZE, 7);
        if (memcmp(host, back, SIZE) != 0) {
            fprintf(stderr, "B read something else than A wrote\n");
            return 1;
        }
        fill(host, 4096, 99);
        CHECK(aclrtMemcpy(va, 4096, host, 4096, ACL_MEMCPY_HOST_TO_DEVICE));
        CHECK(aclrtUnmapMem(va));
        char done = 'd';
        send_bytes(&b, &done, 1);
        CHECK(aclrtReleaseMemAddress(va));
        CHECK(aclrtFreePhysical(handle));
        CHECK(aclrtResetDevice(1));
        CHECK(aclFinalize());
        return 0;
    }

    /* Process A, on device 0. */
    size_t granularity = 0;
    aclrtDrvMemHandle handle = NULL;
    void *va = NULL;
    uint64_t shareable = 0;
    int32_t pid = 0;
    CHECK(aclInit(NULL));
    CHECK(aclrtSetDevice(0));
    CHECK(aclrtMemGetAllocationGranularity(&prop, ACL_RT_MEM_ALLOC_GRANULARITY_MINIMUM, &granularity));
    if (granularity == 0 || SIZE % granularity != 0) {
        fprintf(stderr, "granularity %zu\n", granularity);
        return 1;
    }
    CHECK(aclrtMallocPhysical(&handle, SIZE, &prop, 0));
    CHECK(aclrtReserveMemAddress(&va, SIZE, 0, NULL, 0));
    CHECK(aclrtMapMem(va, SIZE, 0, handle, 0));
    fill(host, SIZE, 7);
    CHECK(aclrtMemcpy(va, SIZE, host, SIZE, ACL_MEMCPY_HOST_TO_DEVICE));
    CHECK(aclrtMemExportToShareableHandle(handle, ACL_MEM_HANDLE_TYPE_NONE, ACL_RT_VMM_EXPORT_FLAG_DEFAULT, &shareable));
    EXPECT(aclrtMemExportToShareableHandle(handle, ACL_MEM_HANDLE_TYPE_NONE, 0, &shareable), ACL_ERROR_RT_DRV_INTERNAL_ERROR);
    recv_bytes(&a, &pid, sizeof pid);
    CHECK(aclrtMemSetPidToShareableHandle(shareable, &pid, 1));
    send_bytes(&a, &shareable, sizeof shareable);
    char done = 0;
    recv_bytes(&a, &done, 1);
    CHECK(aclrtMemcpy(back, 4096, va, 4096, ACL_MEMCPY_DEVICE_TO_HOST));
    fill(host, 4096, 99);
    if (memcmp(host, back, 4096) != 0) {
        fprintf(stderr, "A does not see what B wrote\n");
        return 1;
    }
    CHECK(aclrtUnmapMem(va));
    CHECK(aclrtReleaseMemAddress(va));
    CHECK(aclrtFreePhysical(handle));
    CHECK(aclrtResetDeviceForce(0));
    CHECK(aclFinalize());
    return finish_pair(child, "vmm_share_withpid");
}
