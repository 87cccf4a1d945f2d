// The kernel tier: tests that run against a real /dev/vhost-net.
// Run directly on a host with vhost-net as root, or in a VM with Scripts/vm.
KernelTestRunner.main(tests: allKernelTests)
