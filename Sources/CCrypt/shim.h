#ifndef SWETCD_CCRYPT_SHIM_H
#define SWETCD_CCRYPT_SHIM_H
// libxcrypt (Debian libcrypt-dev): bcrypt password hashing through crypt_gensalt_rn / crypt_rn.
#include <crypt.h>
#endif
