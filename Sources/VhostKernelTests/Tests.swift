let allKernelTests: [KernelTest] = []
