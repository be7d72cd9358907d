/*
 * acl/acl.h for programs written against the AscendCL headers that only use the subset aclshm declares:
 * compile them with -I<aclshm>/ffi/include and link them to the simulator's drop-in libascendcl.so.
 * aclshm's own declarations, not the official header.
 */
#ifndef ACLSHM_ACL_ACL_H
#define ACLSHM_ACL_ACL_H
#include "../aclshm_acl.h"
#endif
