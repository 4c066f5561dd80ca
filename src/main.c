#include <stdio.h>
int main(void)
{
    puts("ficus " FICUS_VERSION);
    return 0;
}
