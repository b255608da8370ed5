#ifndef SWETCD_CLMDB_SHIM_H
#define SWETCD_CLMDB_SHIM_H
#include <lmdb.h>
#endif
