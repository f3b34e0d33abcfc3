"""A small lab of network namespaces with apiserver stand-ins, for the kernel tests and the demo."""
