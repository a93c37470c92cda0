print("legion")
