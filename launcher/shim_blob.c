/* The exec-mode shim (exec_shim.c, built as a shared object by CMake) as
 * bytes inside the launcher, so exec mode needs no file beside python-mpi
 * (which may have been copied to a node alone, e.g. by srun --bcast). */
#ifndef PMB_EXEC_SHIM_FILE
#error "PMB_EXEC_SHIM_FILE: the path of the built shim (set by CMakeLists.txt)"
#endif
__asm__(".section .rodata\n"
        ".balign 16\n"
        ".globl pmb_exec_shim_image\n"
        "pmb_exec_shim_image:\n"
        ".incbin \"" PMB_EXEC_SHIM_FILE "\"\n"
        ".globl pmb_exec_shim_end\n"
        "pmb_exec_shim_end:\n"
        ".previous\n");
