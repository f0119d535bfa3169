#include <kiss_fft.h>
#include <kiss_fftnd.h>
