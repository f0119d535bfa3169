import Millrace
print("gen")
