/*
 * aclrtMalloc memory shared by key with a pid whitelist, as in the official sample "IPC memory with pid":
 * A allocates and fills memory, exports it under a key, whitelists B and sends the key; B imports it,
 * reads it and closes; A closes the key, then frees the memory.
 */
#include "common.h"

#define SIZE (1u << 20)

int main(void) {
    channel a, b;
    pid_t child = start_pair(&a, &b);
    static unsigned char host[SIZE], back[SIZE];
    for (size_t i = 0; i < SIZE; i++) host[i] = (unsigned char)(i ^ (i >> 8));
    char key[65];

    if (child == 0) {
        int32_t pid = 0;
        void *ptr = NULL;
        CHECK(aclrtSetDevice(0));
        CHECK(aclrtDeviceGetBareTgid(&pid));
        recv_bytes(&b, key, sizeof key);
        EXPECT(aclrtIpcMemImportByKey(&ptr, key, ACL_RT_IPC_MEM_IMPORT_FLAG_ENABLE_PEER_ACCESS),
               ACL_ERROR_RT_DRV_INTERNAL_ERROR);
        send_bytes(&b, &pid, sizeof pid);
        char ready = 0;
        recv_bytes(&b, &ready, 1);
        CHECK(aclrtIpcMemImportByKey(&ptr, key, ACL_RT_IPC_MEM_IMPORT_FLAG_ENABLE_PEER_ACCESS));
        CHECK(aclrtMemcpy(back, SIZE, ptr, SIZE, ACL_MEMCPY_DEVICE_TO_HOST));
        if (memcmp(host, back, SIZE) != 0) {
            fprintf(stderr, "B read something else than A wrote\n");
            return 1;
        }
        CHECK(aclrtIpcMemClose(key));
        char done = 'd';
        send_bytes(&b, &done, 1);
        CHECK(aclrtResetDevice(0));
        return 0;
    }

    void *ptr = NULL;
    int32_t pid = 0;
    CHECK(aclrtSetDevice(0));
    CHECK(aclrtMalloc(&ptr, SIZE, ACL_MEM_MALLOC_HUGE_FIRST));
    CHECK(aclrtMemcpy(ptr, SIZE, host, SIZE, ACL_MEMCPY_HOST_TO_DEVICE));
    EXPECT(aclrtIpcMemGetExportKey(ptr, SIZE, key, 10, ACL_RT_IPC_MEM_EXPORT_FLAG_DEFAULT), ACL_ERROR_RT_PARAM_INVALID);
    CHECK(aclrtIpcMemGetExportKey(ptr, SIZE, key, sizeof key, ACL_RT_IPC_MEM_EXPORT_FLAG_DEFAULT));
    send_bytes(&a, key, sizeof key);
    recv_bytes(&a, &pid, sizeof pid);
    CHECK(aclrtIpcMemSetImportPid(key, &pid, 1));
    char ready = 'r';
    send_bytes(&a, &ready, 1);
    char done = 0;
    recv_bytes(&a, &done, 1);
    CHECK(aclrtIpcMemClose(key));
    CHECK(aclrtFree(ptr));
    CHECK(aclrtResetDevice(0));
    return finish_pair(child, "ipc_memory_withpid");
}
