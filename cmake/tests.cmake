# Unit tests: one cmocka executable per pure module, tests/unit/test_<mod>.c.
if(CMOCKA_FOUND)
    file(GLOB UNIT_TESTS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/unit/test_*.c)
    foreach(src ${UNIT_TESTS})
        get_filename_component(name ${src} NAME_WE)
        add_executable(${name} ${src})
        target_compile_options(${name} PRIVATE ${FICUS_WARNINGS})
        target_link_libraries(${name} PRIVATE ficus_core PkgConfig::CMOCKA)
        add_test(NAME unit/${name} COMMAND ${name})
        set_tests_properties(unit/${name} PROPERTIES TIMEOUT 300
                             ENVIRONMENT "FICUS_TESTDATA=${CMAKE_SOURCE_DIR}/tests/data")
    endforeach()
else()
    message(WARNING "cmocka not found: unit tests are not built (apt-get install libcmocka-dev)")
endif()

# Drivers that integration tests run for modules not reachable through the binary alone:
# resolver_driver follows names with the resolver module against test_resolver.py's DNS server.
add_executable(resolver_driver ${CMAKE_SOURCE_DIR}/tests/integration/resolver_driver.c)
target_compile_options(resolver_driver PRIVATE ${FICUS_WARNINGS})
target_link_libraries(resolver_driver PRIVATE ficus_core)

# Integration and browser tests: Python standard library only, against the real binary.
find_program(PYTHON3 NAMES python3 REQUIRED)
file(GLOB PY_TESTS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/integration/test_*.py
     ${CMAKE_SOURCE_DIR}/tests/browser/test_*.py)
foreach(src ${PY_TESTS})
    get_filename_component(name ${src} NAME_WE)
    get_filename_component(dir ${src} DIRECTORY)
    get_filename_component(kind ${dir} NAME)
    add_test(NAME ${kind}/${name} COMMAND ${PYTHON3} -m unittest -v ${name}
             WORKING_DIRECTORY ${dir})
    set_tests_properties(${kind}/${name} PROPERTIES TIMEOUT 300 SKIP_RETURN_CODE 77
        ENVIRONMENT "FICUS_BIN=$<TARGET_FILE:ficus>;FICUS_RESOLVER_DRIVER=$<TARGET_FILE:resolver_driver>;FICUS_SOURCE_DIR=${CMAKE_SOURCE_DIR};FICUS_SANITIZE=${FICUS_SANITIZE};FICUS_TEST_OUTPUT=${CMAKE_BINARY_DIR}/test-output;PYTHONDONTWRITEBYTECODE=1")
endforeach()
