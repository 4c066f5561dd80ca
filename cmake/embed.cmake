# Turns INPUT into a C source defining the bytes and length of the file.
file(READ ${INPUT} hex HEX)
string(LENGTH "${hex}" hexlen)
math(EXPR n "${hexlen} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," body "${hex}")
string(REGEX REPLACE "(0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,)" "\\1\n" body "${body}")
file(WRITE ${OUTPUT} "/* Generated from dashboard.html by cmake/embed.cmake. */\n#include <stddef.h>\n"
     "const unsigned char dashboard_html[] = {\n${body}0x00};\nconst size_t dashboard_html_len = ${n};\n")
