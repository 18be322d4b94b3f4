# halo build: `make` builds build/halo and build/libhalo.a; `make test` builds and runs the CPU test suite.
# Sources are found by wildcard: add a file under src/<module>/ and it is built; add tests/test_<name>.c and it
# becomes a test binary. CUDA sources (src/cuda/*.cu) are compiled when nvcc is found (CUDA=0 turns that off).
# EXTRA_CFLAGS / EXTRA_LDFLAGS / EXTRA_NVFLAGS add include and library paths (scripts/device_build.sh uses them on the
# GPU machine).
# SAN=1 builds everything with AddressSanitizer + UndefinedBehaviorSanitizer into build-san/.

CC      ?= gcc
NVCC    ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
SAN     ?= 0
CUDA    ?= $(if $(NVCC),1,0)
BUILD   ?= $(if $(filter 1,$(SAN)),build-san,build)
OPT     ?= -O3 -march=native

CFLAGS  := -std=c11 -D_GNU_SOURCE -g $(OPT) -Wall -Wextra -Wno-unused-parameter -fopenmp -Iinclude -Isrc \
           $(shell pkg-config --cflags cjson libpcre2-8 2>/dev/null) -I/usr/include/x86_64-linux-gnu/openblas-openmp $(EXTRA_CFLAGS)
# OpenBLAS's OpenMP build shares OpenMP's thread pool (its pthread build fights it for the cores: 1.3-1.8x slower)
BLAS_DIR ?= /usr/lib/x86_64-linux-gnu/openblas-openmp
BLAS_LDFLAGS := -L$(BLAS_DIR) -Wl,-rpath,$(BLAS_DIR)
LDLIBS  := $(EXTRA_LDFLAGS) $(if $(wildcard $(BLAS_DIR)),$(BLAS_LDFLAGS)) -lopenblas -lcjson -lpcre2-8 -lm -fopenmp
ifeq ($(SAN),1)
  CFLAGS += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  LDLIBS += -fsanitize=address,undefined
  CUDA := 0
endif

LIB_SRC  := $(wildcard src/util/*.c src/io/*.c src/model/*.c src/ops/*.c src/halo/*.c src/train/*.c \
                       src/tokenizer/*.c src/data/*.c src/dist/*.c)
CLI_SRC  := $(wildcard src/cli/*.c)
TEST_SRC := $(wildcard tests/test_*.c)
BENCH_SRC:= $(wildcard bench/bench_*.c)
CU_SRC   := $(wildcard src/cuda/*.cu)

LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
CLI_OBJ  := $(CLI_SRC:%.c=$(BUILD)/%.o)
TESTS    := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
BENCHES  := $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)

ifeq ($(CUDA),1)
  CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
  NVFLAGS := -std=c++17 -O3 -g -arch=sm_90a -Isrc -Iinclude --expt-relaxed-constexpr -Xcompiler -fopenmp \
             $(EXTRA_NVFLAGS)
  CU_OBJ  := $(CU_SRC:%.cu=$(BUILD)/%.o)
  CFLAGS  += -DHALO_CUDA=1 -I$(CUDA_HOME)/include
  LDLIBS  += -L$(CUDA_HOME)/lib64
  # NCCL (src/cuda/comm_nccl.cu) when libnccl.so is in the toolkit's lib64 or lib, the system's library folder or an
  # EXTRA_LDFLAGS -L folder (NCCL=0 leaves it out). Linked as needed: only binaries that call the NCCL backend
  # depend on libnccl.so.2 at run time.
  NCCL_DIRS := $(CUDA_HOME)/lib64 $(CUDA_HOME)/lib /usr/lib/x86_64-linux-gnu $(EXTRA_LDFLAGS:-L%=%)
  NCCL    ?= $(if $(wildcard $(addsuffix /libnccl.so,$(NCCL_DIRS))),1,0)
  ifeq ($(NCCL),1)
    CFLAGS  += -DHALO_NCCL=1
    LDLIBS  += $(if $(wildcard $(CUDA_HOME)/lib/libnccl.so),-L$(CUDA_HOME)/lib) \
               -Wl,--push-state,--as-needed -lnccl -Wl,--pop-state
  else
    CU_OBJ  := $(filter-out $(BUILD)/src/cuda/comm_nccl.o,$(CU_OBJ))
  endif
  LDLIBS  += -lcublasLt -lcublas -lcudart -lstdc++
else
  CU_OBJ  :=
endif

all: $(BUILD)/halo

$(BUILD)/libhalo.a: $(LIB_OBJ) $(CU_OBJ)
	@mkdir -p $(@D)
	ar rcs $@ $^

$(BUILD)/halo: $(CLI_OBJ) $(BUILD)/libhalo.a
	$(CC) $(CFLAGS) -o $@ $(CLI_OBJ) $(BUILD)/libhalo.a $(LDLIBS)

$(BUILD)/%.o: %.c $(wildcard src/*/*.h include/*.h)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/%.o: %.cu $(wildcard src/*/*.h src/cuda/*.cuh include/*.h)
	@mkdir -p $(@D)
	$(NVCC) $(NVFLAGS) -c -o $@ $<

$(BUILD)/tests/%: tests/%.c $(wildcard tests/*.h) $(BUILD)/libhalo.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libhalo.a $(LDLIBS)

$(BUILD)/bench/%: bench/%.c bench/bench.h $(BUILD)/libhalo.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libhalo.a $(LDLIBS)

tests: $(TESTS) $(BUILD)/halo
benches: $(BENCHES) $(BUILD)/halo

test: tests
	@BUILD=$(BUILD) bash tests/run.sh $(TESTS)

clean:
	rm -rf build build-san

.PHONY: all test tests benches clean
