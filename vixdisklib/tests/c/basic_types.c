/*
 * VDDK programs declare variables with VMware's basic types, which
 * VMware's vixDiskLib.h brings in; ours must too. Compiled by
 * vixdisklib/tests/c_abi.rs with only this include, -Werror -pedantic.
 */
#include "vixDiskLib.h"

int main(void)
{
   uint64 capacity = 2048;
   uint32 heads = 64;
   uint8 byte = 0xaa;
   int64 delta = -1;
   int32 sectors = 32;
   uint16 port = 902;
   int16 small = -2;
   int8 tiny = -3;
   VixDiskLibSectorType start = capacity - 1;
   Bool ok = TRUE;
   uint64_t same = capacity; /* the same type as <stdint.h>'s */
   uint64 *p = &same;
   return (int)((start + heads + byte + delta + sectors + port + small + tiny + *p
                 + (uint64)ok) == 0);
}
