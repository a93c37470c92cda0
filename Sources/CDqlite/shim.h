// Debian's libdqlite-dev 1.11.1 (installed by scripts/setup). dqlite.h pulls in <sqlite3.h>.
#include <dqlite.h>
