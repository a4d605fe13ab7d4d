# mergedb_cc_test(NAME name SRCS a.cc b.cc DEPS lib... [LABELS l...] [PROPERTIES k v ...])
# One helper for every test binary: links GoogleTest's main and registers each TEST with ctest
# through gtest_discover_tests, so `ctest -N` lists every test case by name.
function(mergedb_cc_test)
  cmake_parse_arguments(T "" "NAME" "SRCS;DEPS;LABELS;PROPERTIES" ${ARGN})
  add_executable(${T_NAME} ${T_SRCS})
  # Test code at -O1: it compiles in a quarter to a third less time than at -O2 (measured on
  # the largest test files; the build is most of CI's time on two cores) and still runs fast.
  # The code under test keeps the build type's optimization: it lives in the libraries.
  if(CMAKE_BUILD_TYPE MATCHES "^(Release|RelWithDebInfo)$")
    target_compile_options(${T_NAME} PRIVATE -O1)
  endif()
  target_link_libraries(${T_NAME} PRIVATE ${T_DEPS} GTest::gtest GTest::gmock GTest::gtest_main)
  target_include_directories(${T_NAME} PRIVATE ${PROJECT_SOURCE_DIR})
  set(_labels ${T_LABELS})
  if(NOT _labels)
    set(_labels unit)
  endif()
  gtest_discover_tests(${T_NAME}
    DISCOVERY_TIMEOUT 60
    PROPERTIES LABELS "${_labels}" ${T_PROPERTIES})
endfunction()
