# libFuzzer targets, tests/fuzz/fuzz_<name>.c with seeds in tests/fuzz/corpus/<name>/.
# Built in a build of their own with clang (the Makefile's build-fuzz):
#   CC=clang cmake -S . -B build-fuzz -DFICUS_FUZZ=ON && cmake --build build-fuzz --target fuzzers
# Each target becomes a ctest entry labelled "fuzz" that runs it for FICUS_FUZZ_TEST_SECONDS
# over its seeds (make test-fuzz, part of make test); make fuzz runs each for FUZZ_SECONDS.
option(FICUS_FUZZ "Build the libFuzzer targets in tests/fuzz (needs clang)" OFF)
set(FICUS_FUZZ_TEST_SECONDS 5 CACHE STRING "How long ctest runs each fuzz target")
if(NOT FICUS_FUZZ)
    return()
endif()
if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "FICUS_FUZZ needs clang: CC=clang cmake -S . -B build-fuzz -DFICUS_FUZZ=ON")
endif()

# Everything the targets reach is instrumented for coverage and checked by ASan and UBSan;
# the ficus binary and the unit tests of this build link the same library, hence the
# interface link options.
set(FUZZ_SANITIZE -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
foreach(lib ficus_core llhttp)
    target_compile_options(${lib} PRIVATE ${FUZZ_SANITIZE} -fsanitize=fuzzer-no-link)
endforeach()
target_link_options(ficus_core INTERFACE -fsanitize=address,undefined)

add_custom_target(fuzzers)
file(GLOB FUZZ_SOURCES CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/fuzz/fuzz_*.c)
foreach(src ${FUZZ_SOURCES})
    get_filename_component(name ${src} NAME_WE)
    string(REGEX REPLACE "^fuzz_" "" short ${name})
    set(seeds ${CMAKE_SOURCE_DIR}/tests/fuzz/corpus/${short})
    if(NOT IS_DIRECTORY ${seeds})
        message(FATAL_ERROR "${src}: no seed corpus at ${seeds}")
    endif()
    add_executable(${name} EXCLUDE_FROM_ALL ${src})
    target_compile_options(${name} PRIVATE ${FICUS_WARNINGS} ${FUZZ_SANITIZE} -fsanitize=fuzzer)
    target_link_options(${name} PRIVATE -fsanitize=fuzzer,address,undefined)
    target_link_libraries(${name} PRIVATE ficus_core)
    add_dependencies(fuzzers ${name})
    add_test(NAME fuzz/${short}
             COMMAND sh ${CMAKE_SOURCE_DIR}/tests/fuzz/run.sh $<TARGET_FILE:${name}> ${seeds}
                     ${FICUS_FUZZ_TEST_SECONDS} ${CMAKE_BINARY_DIR}/fuzz-test/${short} fresh)
    math(EXPR timeout "${FICUS_FUZZ_TEST_SECONDS} + 120")
    set_tests_properties(fuzz/${short} PROPERTIES LABELS fuzz TIMEOUT ${timeout})
endforeach()
